"""A sample external authorizer for the CUSTOM tests: a plain HTTP server in
the shape of Istio's samples/extauthz, allowing when `x-ext-authz: allow`,
recording the paths it was asked about."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2

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


class _GrpcAuthorizer(external_auth_pb2_grpc.AuthorizationServicer):
    """The same over envoy.service.auth.v3.Authorization/Check."""

    def Check(self, request: Any, context: Any) -> Any:
        headers = request.attributes.request.http.headers
        ASKED.append(request.attributes.request.http.path)
        response = external_auth_pb2.CheckResponse()
        if headers.get("x-ext-authz") == "allow":
            added = response.ok_response.headers.add().header
            added.key, added.value = "x-ext-authz-check-result", "allowed"
        else:
            response.status.code = code_pb2.PERMISSION_DENIED
            response.denied_response.status.code = 403  # type: ignore[assignment]
            response.denied_response.body = "denied by grpc ext_authz"
        return response


@contextlib.contextmanager
def running_grpc_authorizer() -> Iterator[int]:
    """The gRPC authorizer on 127.0.0.1:0; its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(_GrpcAuthorizer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None).wait(10)
