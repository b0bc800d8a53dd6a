"""The GitHub pull request client against the stand-in on 127.0.0.1: open then update, the token
kept to its one host and header, refusals before any request, redirects and huge answers refused."""

from __future__ import annotations

import json

import pytest

from buildtool.adapters.github import GitHubError, PullRequests
from buildtool.core.errors import ToolError
from tests.github_standin import GitHubStandIn

TOKEN = "ghs_Test0Token1Never2Shown"
REPO = "fleet/fleet-buildtool"
PULLS = "/repos/fleet/fleet-buildtool/pulls"


@pytest.fixture
def standin(tmp_path):
    with GitHubStandIn(TOKEN, record=tmp_path / "requests.jsonl") as s:
        yield s


def client(standin: GitHubStandIn, token: str = TOKEN, repository: str = REPO) -> PullRequests:
    return PullRequests(standin.url, repository, token, timeout=5)


def test_the_first_call_opens_and_the_next_updates_the_same_pull_request(standin, tmp_path) -> None:
    api = client(standin)
    first = api.open_or_update(branch="fleet/refresh", base="main", title="Refresh the locks", body="day 1")
    assert (first.number, first.action, first.url) == (1, "opened", f"{standin.url}/fleet/fleet-buildtool/pull/1")
    listed, created = standin.requests
    assert (listed["method"], listed["path"]) == ("GET", PULLS)
    assert listed["query"] == {"head": "fleet:fleet/refresh", "base": "main", "state": "open", "per_page": "100"}
    assert (created["method"], created["path"]) == ("POST", PULLS)
    assert created["body"] == {"title": "Refresh the locks", "head": "fleet/refresh", "base": "main", "body": "day 1", "maintainer_can_modify": False}
    assert {k.lower(): v for k, v in created["headers"].items()}["content-type"] == "application/json"
    second = api.open_or_update(branch="fleet/refresh", base="main", title="Refresh the locks (day 2)", body="day 2")
    assert (second.number, second.action) == (1, "updated")
    patched = standin.requests[-1]
    assert (patched["method"], patched["path"], patched["body"]) == ("PATCH", f"{PULLS}/1", {"title": "Refresh the locks (day 2)", "body": "day 2"})
    assert [(p["number"], p["title"], p["body"]) for p in standin.pulls[REPO]] == [(1, "Refresh the locks (day 2)", "day 2")]
    recorded = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert [(r["method"], r["path"]) for r in recorded] == [("GET", PULLS), ("POST", PULLS), ("GET", PULLS), ("PATCH", f"{PULLS}/1")]


def test_the_token_goes_only_in_the_bearer_header_and_never_into_an_error(standin) -> None:
    client(standin).open_or_update(branch="fleet/refresh", base="main", title="t", body="b")
    assert standin.requests and all(r["authorized"] for r in standin.requests)
    assert all(TOKEN not in json.dumps(r) for r in standin.requests)  # not in the path, query, body or any other header
    for r in standin.requests:
        headers = {k.lower(): v for k, v in r["headers"].items()}  # names are case-insensitive; urllib sends "X-github-api-version"
        assert headers["accept"] == "application/vnd.github+json" and headers["x-github-api-version"] == "2022-11-28"
        assert headers["user-agent"] == "fleet-buildtool"
    with pytest.raises(GitHubError) as bad:
        client(standin, token="wrong-" + TOKEN).open_or_update(branch="fleet/refresh", base="main", title="t", body="b")
    assert f"GET {PULLS} failed with HTTP 401: Bad credentials" in bad.value.message and TOKEN not in bad.value.message
    assert standin.requests[-1]["authorized"] is False
    echo = json.dumps({"message": f"boom: you sent Bearer {TOKEN} " + "x" * 1000}).encode()
    standin.override = lambda method, path: (500, {"Content-Type": "application/json"}, echo)
    with pytest.raises(GitHubError) as failed:
        client(standin).open_or_update(branch="fleet/refresh", base="main", title="t", body="b")
    assert "HTTP 500: boom" in failed.value.message and TOKEN not in failed.value.message and len(failed.value.message) < 420
    assert failed.value.exit_code == 15 and isinstance(failed.value, ToolError)


@pytest.mark.parametrize(
    ("api", "repository", "token", "branch", "base", "title", "why"),
    [
        ("http://example.com", REPO, TOKEN, "b", "main", "t", "plain http to example.com"),
        ("https://user:pw@github.example", REPO, TOKEN, "b", "main", "t", "credentials"),
        ("https://api.github.com/?x=1", REPO, TOKEN, "b", "main", "t", "query"),
        ("https://api.github.com#x", REPO, TOKEN, "b", "main", "t", "fragment"),
        ("https://api.github.com /x", REPO, TOKEN, "b", "main", "t", "whitespace"),
        ("https://api.github.com\n", REPO, TOKEN, "b", "main", "t", "control"),
        ("https://api.github.com:99999", REPO, TOKEN, "b", "main", "t", "out of range"),
        ("ftp://api.github.com", REPO, TOKEN, "b", "main", "t", "not https://HOST"),
        (None, "a/b/c", TOKEN, "b", "main", "t", "not OWNER/NAME"),
        (None, "-x/y", TOKEN, "b", "main", "t", "not OWNER/NAME"),
        (None, "o_k/y", TOKEN, "b", "main", "t", "not OWNER/NAME"),
        (None, "x/..", TOKEN, "b", "main", "t", "not OWNER/NAME"),
        (None, REPO, "", "b", "main", "t", "token is empty"),
        (None, REPO, "tok en", "b", "main", "t", "whitespace"),
        (None, REPO, "tok\nen", "b", "main", "t", "whitespace"),
        (None, REPO, TOKEN, "../x", "main", "t", "branch '../x' is not a safe"),
        (None, REPO, TOKEN, "a..b", "main", "t", "not a safe"),
        (None, REPO, TOKEN, "feature/", "main", "t", "not a safe"),
        (None, REPO, TOKEN, "a//b", "main", "t", "not a safe"),
        (None, REPO, TOKEN, "a/.b", "main", "t", "not a safe"),
        (None, REPO, TOKEN, "x.lock", "main", "t", "not a safe"),
        (None, REPO, TOKEN, "-x", "main", "t", "not a safe"),
        (None, REPO, TOKEN, "x\n", "main", "t", "not a safe"),
        (None, REPO, TOKEN, "b", "main:evil", "t", "base 'main:evil'"),
        (None, REPO, TOKEN, "b", "main", "one\ntwo", "one line"),
        (None, REPO, TOKEN, "b", "main", "", "one line"),
        (None, REPO, TOKEN, "b", "main", "x" * 257, "one line"),
    ],
)
def test_unsafe_inputs_are_refused_before_any_request(standin, api, repository, token, branch, base, title, why) -> None:
    with pytest.raises(GitHubError) as refused:
        PullRequests(api or standin.url, repository, token).open_or_update(branch=branch, base=base, title=title, body="b")
    assert why in refused.value.message
    assert "pw" not in refused.value.message and TOKEN not in refused.value.message
    assert standin.requests == []


@pytest.mark.parametrize("api", ["https://api.github.com", "https://ghe.example.com/api/v3/", "http://localhost:8080", "http://[::1]:9", "http://127.0.0.1"])
def test_the_urls_of_github_and_of_loopback_stand_ins_are_taken(api) -> None:
    assert PullRequests(api, REPO, TOKEN).requests == 0


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_is_refused_and_the_token_stays_home(standin, code) -> None:
    with GitHubStandIn(TOKEN) as elsewhere:
        standin.override = lambda method, path: (code, {"Location": f"{elsewhere.url}{path}"}, b"")
        with pytest.raises(GitHubError, match=f"redirect \\(HTTP {code}\\) to '{elsewhere.url}{PULLS}'"):
            client(standin).open_or_update(branch="fleet/refresh", base="main", title="t", body="b")
        assert len(standin.requests) == 1 and elsewhere.requests == []


def test_an_answer_over_one_mib_is_refused(standin) -> None:
    standin.override = lambda method, path: (200, {}, b"[" + b" " * (1 << 20) + b"]")
    with pytest.raises(GitHubError, match="more than 1 MiB"):
        client(standin).open_or_update(branch="fleet/refresh", base="main", title="t", body="b")
    standin.override = lambda method, path: (200, {}, b"[" + b" " * ((1 << 20) - 2) + b"]") if method == "GET" else None  # exactly 1 MiB: taken
    assert client(standin).open_or_update(branch="fleet/refresh", base="main", title="t", body="b").action == "opened"


@pytest.mark.parametrize("answer", [b"not json", b'{"number": 1}', b'[{"number": "1", "html_url": "x", "head": {}, "base": {}}]', b"[[[[[[[[[["])
def test_an_answer_of_another_shape_is_refused(standin, answer) -> None:
    standin.override = lambda method, path: (200, {}, answer)
    with pytest.raises(GitHubError, match=f"GET {PULLS} answered something"):
        client(standin).open_or_update(branch="fleet/refresh", base="main", title="t", body="b")


def test_of_several_open_pull_requests_the_lowest_numbered_is_updated(standin) -> None:
    standin.add(REPO, head="fleet/refresh", base="main", state="closed")  # 1: closed
    standin.add(REPO, head="other:fleet/refresh", base="main")  # 2: a fork's branch of the same name
    standin.add(REPO, head="fleet/refresh", base="release")  # 3: into another base
    for _ in range(3):
        standin.add(REPO, head="fleet/refresh", base="main")  # 4, 5, 6
    pr = client(standin).open_or_update(branch="fleet/refresh", base="main", title="Refresh", body="new")
    assert (pr.number, pr.action) == (4, "updated")
    assert [(r["method"], r["path"]) for r in standin.requests] == [("GET", PULLS), ("PATCH", f"{PULLS}/4")]
    assert [p["body"] for p in standin.pulls[REPO]] == ["", "", "", "new", "", ""]


def test_a_long_body_is_cut_with_a_last_line_saying_so(standin) -> None:
    client(standin).open_or_update(branch="fleet/refresh", base="main", title="t", body="y" * 70000)
    sent = standin.requests[-1]["body"]["body"]
    assert len(sent) == 60000 and sent.startswith("y" * 59000) and sent.splitlines()[-1].startswith("(cut here: the text was 70000 characters")


def test_an_unreachable_api_is_named(standin) -> None:
    api = client(standin)
    standin.close()
    with pytest.raises(GitHubError, match=f"GitHub API at {api.host}: GET {PULLS}: not reachable"):
        api.open_or_update(branch="fleet/refresh", base="main", title="t", body="b")
