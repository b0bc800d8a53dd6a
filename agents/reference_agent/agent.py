"""Reference agent: the stand-in every fleet service runs until it points at its real code.

Answers ``GET /health`` with ``{"status": "ok"}`` on HEALTH_PORT and serves a small JSON
description on SERVICE_PORT. Standard library only, so it runs in every family (Python 3.10+).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _profile() -> dict[str, object]:
    try:
        with open("/etc/machine-profile.json", encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


class Handler(BaseHTTPRequestHandler):
    server_version = "reference-agent/1"

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.server.role == "health":  # type: ignore[attr-defined]
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            else:
                self._send(404, {"error": "not found"})
        else:
            self._send(200, {"service": os.environ.get("SERVICE_NAME", "unknown"), "profile": _profile()})

    def log_message(self, format: str, *args: object) -> None:
        if os.environ.get("AGENT_ACCESS_LOG"):
            super().log_message(format, *args)


def serve(role: str, port: int, bind: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((bind, port), Handler)
    server.role = role  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, name=role, daemon=True).start()
    return server


def main() -> int:
    bind = os.environ.get("BIND_ADDRESS", "0.0.0.0")
    servers = [
        serve("service", int(os.environ["SERVICE_PORT"]), bind),
        serve("health", int(os.environ["HEALTH_PORT"]), bind),
    ]
    print(f"{os.environ.get('SERVICE_NAME', 'agent')}: service :{servers[0].server_port} health :{servers[1].server_port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    for s in servers:
        s.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
