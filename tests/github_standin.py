"""A stand-in of the part of GitHub's REST API that :mod:`buildtool.adapters.github` uses: list,
open and update the pull requests of a repository, and list and delete the versions of container
packages (ghcr.io's images), held in memory. It serves on 127.0.0.1 only,
wants ``Authorization: Bearer TOKEN`` (401 otherwise) and records every request (method, path,
query, JSON body, the headers but Authorization, whether the token was right) in
:attr:`GitHubStandIn.requests` and, given ``record``, as one JSON line each appended to that file
(what a separate process was asked). :attr:`GitHubStandIn.override`, when set, answers instead:
``(method, path) -> (status, headers, bytes)`` or None (a redirect, a huge answer). For tests, and
for running the refresh workflow under act::

    python -m tests.github_standin --port 0 --token T --record FILE   # prints http://127.0.0.1:PORT; serves until killed
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

PULLS = re.compile(r"/repos/([^/]+)/([^/]+)/pulls(?:/([0-9]+))?")
VERSIONS = re.compile(r"/(orgs|users)/([^/]+)/packages/container/([^/]+)/versions(?:/([0-9]+))?")


class GitHubStandIn:
    def __init__(self, token: str, *, port: int = 0, record: Path | str | None = None) -> None:
        self.token = token
        self.record = Path(record) if record else None
        self.requests: list[dict] = []
        self.pulls: dict[str, list[dict]] = {}  # "owner/name" -> pull objects, by number
        self.packages: dict[tuple[str, str, str], list[dict]] = {}  # (orgs|users, owner, url-encoded package) -> versions
        self.override: Callable[[str, str], tuple[int, dict[str, str], bytes] | None] | None = None
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def __enter__(self) -> GitHubStandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, repository: str, *, head: str, base: str, title: str = "", body: str = "", state: str = "open") -> dict:
        """A pull request of ``repository`` from ``head`` (``branch`` or ``owner:branch``), as if opened before."""
        owner = repository.split("/")[0]
        pulls = self.pulls.setdefault(repository, [])
        label = head if ":" in head else f"{owner}:{head}"
        pull = {"number": len(pulls) + 1, "html_url": f"{self.url}/{repository}/pull/{len(pulls) + 1}", "state": state, "title": title, "body": body,
                "head": {"ref": label.split(":", 1)[1], "label": label}, "base": {"ref": base}}  # fmt: skip
        pulls.append(pull)
        return pull

    def add_version(self, kind: str, owner: str, package: str, digest: str, tags: list[str]) -> dict:
        """A version of a container package (an image manifest on ghcr.io), as the Packages API lists it."""
        from urllib.parse import quote

        versions = self.packages.setdefault((kind, owner, quote(package, safe="")), [])
        version = {"id": 1000 + sum(len(v) for v in self.packages.values()), "name": digest, "metadata": {"container": {"tags": tags}}}
        versions.append(version)
        return version

    def answer(self, method: str, path: str, query: dict[str, str], body: object) -> tuple[int, object]:
        v = VERSIONS.fullmatch(path)
        if v:
            versions = self.packages.get((v[1], v[2], v[3]))
            if versions is None:
                return 404, {"message": "Package not found."}
            if method == "GET" and v[4] is None:
                per_page, page = int(query.get("per_page", "30")), int(query.get("page", "1"))
                return 200, versions[(page - 1) * per_page : page * per_page]
            found = [x for x in versions if str(x["id"]) == v[4]]
            if method == "DELETE" and found:
                versions.remove(found[0])
                return 204, None
            return 404, {"message": "Not Found"}
        m = PULLS.fullmatch(path)
        if not m or (m[3] is None) != (method in ("GET", "POST")):
            return 404, {"message": "Not Found"}
        repository = f"{m[1]}/{m[2]}"
        pulls = self.pulls.get(repository, [])
        if method == "GET":
            state, head, base = query.get("state", "open"), query.get("head"), query.get("base")
            return 200, [p for p in pulls if state in ("all", p["state"]) and head in (None, p["head"]["label"]) and base in (None, p["base"]["ref"])]
        if not isinstance(body, dict):
            return 400, {"message": "Problems parsing JSON"}
        if method == "POST":
            if not all(isinstance(body.get(k), str) for k in ("title", "head", "base")):
                return 422, {"message": "Validation Failed"}
            label = body["head"] if ":" in body["head"] else f"{m[1]}:{body['head']}"
            if any(p["state"] == "open" and p["head"]["label"] == label for p in pulls):
                return 422, {"message": f"A pull request already exists for {label}."}
            return 201, self.add(repository, head=body["head"], base=body["base"], title=body["title"], body=body.get("body") or "")
        if not 0 < int(m[3]) <= len(pulls):
            return 404, {"message": "Not Found"}
        pull = pulls[int(m[3]) - 1]
        pull.update({k: body[k] for k in ("title", "body", "state") if isinstance(body.get(k), str)})
        return 200, pull

    def handle(self, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(request.path)
        raw = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        authorized = request.headers.get("Authorization") == f"Bearer {self.token}"
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        entry = {"method": request.command, "path": url.path, "query": dict(parse_qsl(url.query)), "body": body, "headers": headers, "authorized": authorized}
        with self._lock:
            self.requests.append(entry)
            if self.record:
                with self.record.open("a") as f:
                    f.write(json.dumps(entry) + "\n")
            special = self.override(request.command, url.path) if self.override else None
            if special:
                return special
            status, answer = self.answer(request.command, url.path, entry["query"], body) if authorized else (401, {"message": "Bad credentials"})
        return status, {"Content-Type": "application/json"}, b"" if status == 204 else json.dumps(answer).encode()


def _handler(standin: GitHubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            status, headers, data = standin.handle(self)
            self.send_response(status)
            for k, v in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", required=True)
    parser.add_argument("--record", type=Path, help="append each request to this file as a JSON line")
    args = parser.parse_args(argv)
    with GitHubStandIn(args.token, port=args.port, record=args.record) as standin:
        print(standin.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
