"""The one module that speaks HTTP to GitHub: open, or update, the one pull request of a branch.

The daily lock refresh pushes its branch, then calls :meth:`PullRequests.open_or_update`, which
lists the open pulls of ``owner:branch`` into ``base`` and updates the lowest-numbered one, or opens
one (GitHub's REST API, version 2022-11-28). It is strict because it carries a token that can write
to the repository: the API URL must be https (plain http only to a loopback host: the stand-in of
tests and local runs) with no credentials, query, fragment, whitespace or control characters;
redirects are never followed, so the token reaches that scheme, host and port only; repository,
branches, title and token are full-matched before any request; answers are read up to 1 MiB and
must be JSON of the expected shape. Every failure is a :class:`GitHubError`, whose message never
holds the token. A body over 60000 characters (GitHub's limit: 65536) is cut, not refused: the pull
request is still worth having, and its last line says the text was cut and from what length.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from buildtool.adapters.registry import is_loopback
from buildtool.core.errors import ToolError

LIMIT = 1 << 20  # bytes read of any answer
MAX_BODY = 60000
API_URL = re.compile(r"(https?)://([A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::([0-9]{1,5}))?((?:/[A-Za-z0-9._~-]+)*)/?")
REPOSITORY = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]{0,38})/((?!\.{1,2}\Z)[A-Za-z0-9._-]{1,100})")
REF = re.compile(r"(?!.*\.\.)(?!.*//)(?!.*/\.)(?!.*\.lock(?:/|\Z))(?!.*[/.]\Z)[A-Za-z0-9][A-Za-z0-9._/-]{0,99}")
TITLE = re.compile(r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]{1,256}")
TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")  # printable ASCII, no spaces
PULL_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f-\x9f]{1,500}")
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28", "User-Agent": "fleet-buildtool"}


class GitHubError(ToolError):
    """GitHub's API refused, failed or was not reachable, or what it was to be sent is unsafe."""

    exit_code = 15


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str
    action: str  # "opened" or "updated"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer, not a direction: it reaches :meth:`PullRequests._call` as an HTTPError."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _full(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _clean(text: str, limit: int) -> str:
    return UNPRINTABLE.sub(" ", text)[:limit]


def _api(url: object) -> tuple[str, str, bool]:
    """(base URL, host[:port], loopback) of an API URL; GitHubError saying why it is refused."""
    text = url if isinstance(url, str) else ""
    m = API_URL.fullmatch(text)
    if re.search(r"[\s\x00-\x1f\x7f-\x9f]", text):
        why = "holds whitespace or a control character"
    elif "?" in text or "#" in text:
        why = "has a query or a fragment"
    elif "@" in text:
        why = "holds credentials (user info before '@'); the token is given separately"
    elif not m:
        why = "is not https://HOST[:PORT][/PATH]"
    elif m[3] and not 0 < int(m[3]) < 65536:
        why = f"has the port {m[3]}, out of range"
    elif m[1] == "http" and not is_loopback(f"{m[2]}:{m[3] or 80}"):
        why = f"uses plain http to {m[2]}, which is not a loopback host; use https"
    else:
        netloc = m[2] + (f":{m[3]}" if m[3] else "")
        return f"{m[1]}://{netloc}{m[4]}", netloc, m[1] == "http" or is_loopback(f"{m[2]}:{m[3] or 443}")
    raise GitHubError(f"the GitHub API URL {why}; refusing to send it the token")


def _pull(obj: object) -> tuple[int, str, str, str] | None:
    """(number, html_url, head ref, base ref) of a pull object; None for any other shape."""
    if not isinstance(obj, dict) or not isinstance(obj.get("head"), dict) or not isinstance(obj.get("base"), dict):
        return None
    number, url, head, base = obj.get("number"), obj.get("html_url"), obj["head"].get("ref"), obj["base"].get("ref")
    if type(number) is not int or number < 1 or not _full(PULL_URL, url) or not isinstance(head, str) or not isinstance(base, str):
        return None
    return number, url, head, base


def _cut(body: str) -> str:
    note = f"\n\n(cut here: the text was {len(body)} characters, over the {MAX_BODY} a pull request body is given)"
    return body if len(body) <= MAX_BODY else body[: MAX_BODY - len(note)] + note


def _message(answer: urllib.error.HTTPError) -> str:
    """': <GitHub's message>' from an error answer (300 characters at most), or ''."""
    try:
        raw = answer.read(LIMIT + 1)
        message = json.loads(raw).get("message") if len(raw) <= LIMIT else None
    except (OSError, http.client.HTTPException, ValueError, AttributeError, RecursionError):
        return ""
    return f": {_clean(message, 300)}" if isinstance(message, str) and message else ""


class _Api:
    """The API at ``api_url`` with ``token``: one request at a time, through :meth:`_call`."""

    def __init__(self, api_url: str, token: str, *, timeout: float = 30.0) -> None:
        self._base, self.host, loopback = _api(api_url)
        if not _full(TOKEN, token):
            raise GitHubError("the GitHub token is empty, or holds whitespace, control or non-ASCII characters")
        self._token = token
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirect(), *([urllib.request.ProxyHandler({})] if loopback else []))
        self.requests = 0  # requests made, for tests


    def _error(self, text: str) -> GitHubError:
        return GitHubError(f"GitHub API at {self.host}: {text}".replace(self._token, "[token]"))

    def _call(self, method: str, path: str, payload: dict | None = None, *, query: dict[str, str] | None = None, expect: int = 200) -> object:
        """The JSON answer of one request; a GitHubError for anything but ``expect``."""
        where = f"{method} {path}"
        data = None if payload is None else json.dumps(payload).encode()
        headers = HEADERS | ({"Content-Type": "application/json"} if data is not None else {})
        req = urllib.request.Request(self._base + path + (f"?{urllib.parse.urlencode(query)}" if query else ""), data=data, method=method, headers=headers)
        req.add_unredirected_header("Authorization", f"Bearer {self._token}")
        self.requests += 1
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read(LIMIT + 1)
        except urllib.error.HTTPError as exc:
            with exc:  # closes the answer
                if 300 <= exc.code < 400:
                    location = _clean(exc.headers.get("Location", ""), 200)
                    raise self._error(f"{where} was answered with a redirect (HTTP {exc.code}) to {location!r}; redirects are not followed") from exc
                raise self._error(f"{where} failed with HTTP {exc.code}{_message(exc)}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._error(f"{where}: not reachable ({_clean(str(getattr(exc, 'reason', exc)), 200)})") from exc
        if len(raw) > LIMIT:
            raise self._error(f"{where} answered more than 1 MiB; refused")
        if status != expect:
            raise self._error(f"{where} answered HTTP {status}, not {expect}")
        if status == 204:
            return None  # No Content: a delete done
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise self._error(f"{where} answered something that is not JSON") from exc


class PullRequests(_Api):
    """The pull requests of ``repository`` (``OWNER/NAME``), through the API at ``api_url`` with ``token``."""

    def __init__(self, api_url: str, repository: str, token: str, *, timeout: float = 30.0) -> None:
        m = REPOSITORY.fullmatch(repository) if isinstance(repository, str) else None
        if not m:
            raise GitHubError(f"the repository {str(repository)[:120]!r} is not OWNER/NAME (letters, digits and '-'; in NAME also '_' and '.')")
        super().__init__(api_url, token, timeout=timeout)
        self.owner, self.name = m[1], m[2]

    def open_or_update(self, *, branch: str, base: str, title: str, body: str) -> PullRequest:
        """Update the lowest-numbered open pull request of ``branch`` into ``base``, or open one."""
        for what, ref in (("branch", branch), ("base", base)):
            if not _full(REF, ref):
                raise GitHubError(f"the {what} {str(ref)[:120]!r} is not a safe branch name (letters, digits, '.', '_', '/', '-'; "
                                  "no '..', '//' or '/.'; not ending in '/', '.' or '.lock')")  # fmt: skip
        if not _full(TITLE, title) or not isinstance(body, str):
            raise GitHubError("the pull request title must be one line of 1 to 256 characters without control characters, and its body text")
        body, pulls = _cut(body), f"/repos/{self.owner}/{self.name}/pulls"
        found = self._call("GET", pulls, query={"head": f"{self.owner}:{branch}", "base": base, "state": "open", "per_page": "100"})
        shaped = [_pull(p) for p in found] if isinstance(found, list) else [None]
        if None in shaped:
            raise self._error(f"GET {pulls} answered something other than a list of pull requests")
        mine = sorted(p for p in shaped if p and p[2] == branch and p[3] == base)
        if mine:
            path, action = f"{pulls}/{mine[0][0]}", "updated"
            answer = self._call("PATCH", path, {"title": title, "body": body})
        else:
            path, action = pulls, "opened"
            answer = self._call("POST", path, {"title": title, "head": branch, "base": base, "body": body, "maintainer_can_modify": False}, expect=201)
        pull = _pull(answer)
        if not pull or pull[2:] != (branch, base) or (mine and pull[0] != mine[0][0]):
            raise self._error(f"{'PATCH' if mine else 'POST'} {path} answered something other than the pull request of {branch} into {base}")
        return PullRequest(number=pull[0], url=pull[1], action=action)


OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,38}")
PACKAGE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")
MAX_VERSION_PAGES = 100  # of 100 versions each


class ContainerPackages(_Api):
    """The versions of ``owner``'s container packages (ghcr.io's images), through GitHub's Packages
    API: ghcr.io refuses the registry API's manifest delete (HTTP 405), so retention deletes here.
    ``owner`` is an organisation, or else a user (the API's other path)."""

    def __init__(self, api_url: str, owner: str, token: str, *, timeout: float = 30.0) -> None:
        if not _full(OWNER, owner):
            raise GitHubError(f"the package owner {str(owner)[:60]!r} is not a GitHub account name")
        super().__init__(api_url, token, timeout=timeout)
        self.owner = owner
        self._kind = ""  # "orgs" or "users", found on first use

    def _path(self, package: str, suffix: str = "") -> str:
        if not _full(PACKAGE, package):
            raise GitHubError(f"the package {str(package)[:120]!r} is not an image name")
        return f"/{self._kind}/{self.owner}/packages/container/{urllib.parse.quote(package, safe='')}/versions{suffix}"

    def versions(self, package: str) -> dict[str, int]:
        """Manifest digest -> version id of every version of ``package`` (a name below the owner)."""
        found: dict[str, int] = {}
        for page in range(1, MAX_VERSION_PAGES + 1):
            answer = self._page(package, page)
            if not isinstance(answer, list) or not all(isinstance(v, dict) and isinstance(v.get("id"), int) and _full(DIGEST, v.get("name")) for v in answer):
                raise self._error(f"GET {self._path(package)} answered something other than a list of package versions")
            found |= {v["name"]: v["id"] for v in answer}
            if len(answer) < 100:
                return found
        raise self._error(f"{package} has more than {MAX_VERSION_PAGES * 100} versions; refused")

    def _page(self, package: str, page: int) -> object:
        query = {"per_page": "100", "page": str(page)}
        if self._kind:
            return self._call("GET", self._path(package), query=query)
        for kind in ("orgs", "users"):
            self._kind = kind
            try:
                return self._call("GET", self._path(package), query=query)
            except GitHubError as exc:
                if "HTTP 404" not in exc.message or kind == "users":
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def delete(self, package: str, version: int) -> None:
        self._call("DELETE", self._path(package, f"/{int(version)}"), expect=204)


DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
