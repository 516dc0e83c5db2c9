"""A sample external authorizer for the CUSTOM tests: a plain HTTP server in
the shape of Istio's samples/extauthz, allowing when `x-ext-authz: allow`,
recording the paths it was asked about."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ASKED: list[str] = []


class _Authorizer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ASKED.append(self.path)
        allowed = self.headers.get("x-ext-authz") == "allow"
        body = b"" if allowed else b"denied by ext_authz"
        self.send_response(200 if allowed else 403)
        self.send_header("x-ext-authz-check-result", "allowed" if allowed else "denied")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def running_authorizer() -> Iterator[ThreadingHTTPServer]:
    """The authorizer on 127.0.0.1:0, stopped on exit (or earlier by the test)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Authorizer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
