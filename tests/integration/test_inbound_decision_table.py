"""Every row of the inbound decision table on every server stack, over real sockets.

Stacks: the library's uvicorn protocols (h11 and httptools, as `serve_asgi`
runs them, PeerAuthentication DISABLE) with the ASGI middleware; gunicorn's
sync worker with the WSGI middleware (what `MeshSyncWorker` installs); grpcio
sync and aio servers with the authorization interceptors. Each stack serves
each policy group on its own port (gRPC: its own server), started once for the
module. HTTP rows are written byte for byte on a raw socket; gRPC rows are
calls whose `:path` is the row's target. An app that is reached echoes the
method, Host and path it was handed: for a 200 row they must be what the
policy judged. A last test checks that the stacks agree on every row.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import jwt
import pytest
import uvicorn
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from proxyless_mesh.integrations._asgi import AuthorizationMiddleware
from proxyless_mesh.integrations._grpc_server import (
    AioAuthorizationServerInterceptor,
    AuthorizationServerInterceptor,
)
from proxyless_mesh.integrations._serving import MeshUvicornConfig
from proxyless_mesh.model import TlsMode
from proxyless_mesh.policy import (
    PathNormalization,
    PolicySet,
    authorization_policies_to_rbac,
    request_authentications_to_jwt,
)
from proxyless_mesh.security._inbound import InboundTls

sys.path.insert(0, str(Path(__file__).parent))
from inbound_table import ISSUER, NORMALIZATION, POLICIES, ROWS, Row

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_JWK = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
JWKS = json.dumps({"keys": [_JWK]})
_NOW = int(time.time())
TOKENS = {
    b"{TOKEN}": jwt.encode({"iss": ISSUER, "sub": "admin", "exp": _NOW + 3600}, KEY, "RS256"),
    b"{EXPIRED}": jwt.encode({"iss": ISSUER, "sub": "admin", "exp": _NOW - 3600}, KEY, "RS256"),
    b"{FORGED}": jwt.encode(
        {"iss": ISSUER, "sub": "admin", "exp": _NOW + 3600}, OTHER_KEY, "RS256"
    ),
}
GROUPS = sorted(POLICIES)
GRPC_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INTERNAL: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
}
Outcome = tuple[int, dict[str, Any]]  # status, what the app echoed (empty when not reached)


def policy_documents(group: str) -> list[dict[str, Any]]:
    """The group's Istio YAML, with the test's JWKS put in."""
    docs = [d for d in yaml.safe_load_all(POLICIES[group]) if d]
    for doc in docs:
        for rule in doc["spec"].get("jwtRules", ()):
            rule["jwks"] = JWKS
    return docs


def policy_set(group: str) -> PolicySet:
    docs = policy_documents(group)
    return PolicySet(
        authorization_policies_to_rbac([d for d in docs if d["kind"] == "AuthorizationPolicy"]),
        request_authentications_to_jwt([d for d in docs if d["kind"] == "RequestAuthentication"]),
        PathNormalization(NORMALIZATION[group]),
    )


POLICY_SETS = {group: policy_set(group) for group in GROUPS}


def with_tokens(data: bytes) -> bytes:
    for placeholder, token in TOKENS.items():
        data = data.replace(placeholder, token.encode())
    return data


# -- the apps: echo what they were handed ---------------------------------------------


async def echo_asgi(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
    body = json.dumps({"method": scope["method"], "host": host, "path": scope["path"]}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


WSGI_APP = """
import json, os
import yaml
from proxyless_mesh.integrations._wsgi import WsgiAuthorizationMiddleware
from proxyless_mesh.policy import (
    PathNormalization, PolicySet, authorization_policies_to_rbac, request_authentications_to_jwt)

with open(os.environ["TABLE_POLICIES"]) as f:
    CONFIG = json.load(f)


def _policy_set(entry):
    docs = entry["documents"]
    return PolicySet(
        authorization_policies_to_rbac([d for d in docs if d["kind"] == "AuthorizationPolicy"]),
        request_authentications_to_jwt([d for d in docs if d["kind"] == "RequestAuthentication"]),
        PathNormalization(entry["normalization"]),
    )


def echo(environ, start_response):
    environ["wsgi.input"].read()
    body = json.dumps({"method": environ["REQUEST_METHOD"], "host": environ.get("HTTP_HOST", ""),
                       "path": environ["PATH_INFO"]}).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


GUARDED = {}
for port, entry in CONFIG.items():
    policies = _policy_set(entry)
    GUARDED[port] = WsgiAuthorizationMiddleware(echo, policies=lambda p=policies: p)


def app(environ, start_response):
    return GUARDED[environ["SERVER_PORT"]](environ, start_response)
"""


# -- the stacks -----------------------------------------------------------------------


class HttpStack:
    """One server; `ports[group]` is where that group's policy is served."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports

    def send(self, row: Row) -> Outcome:
        data = with_tokens(row.request) + b"\r\nConnection: close\r\n\r\n" + row.body
        with socket.create_connection(("127.0.0.1", self.ports[row.policy]), timeout=10) as s:
            s.sendall(data)
            reply = b""
            try:
                while chunk := s.recv(65536):
                    reply += chunk
            except ConnectionResetError:
                pass
        if not reply:
            return 0, {}
        head, _, body = reply.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, json.loads(body) if status == 200 else {}


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def _uvicorn(http: str) -> Iterator[HttpStack]:
    sockets = {group: _listening() for group in GROUPS}
    by_port = {
        sock.getsockname()[1]: AuthorizationMiddleware(
            echo_asgi, policies=partial(POLICY_SETS.__getitem__, group)
        )
        for group, sock in sockets.items()
    }

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        await by_port[scope["server"][1]](scope, receive, send)

    inbound = InboundTls(credentials=_no_credentials, mode=lambda port: TlsMode.DISABLE)
    config = MeshUvicornConfig(
        app, inbound=inbound, http=http, lifespan="off", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": list(sockets.values())}, daemon=True
    )
    thread.start()
    try:
        _wait_started(lambda: server.started)
        yield HttpStack({g: s.getsockname()[1] for g, s in sockets.items()})
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        for sock in sockets.values():
            sock.close()


def _no_credentials() -> Any:
    raise AssertionError("DISABLE: no TLS, no credentials")


def _wait_started(started: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not started():
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)


def _gunicorn(tmp: Path) -> Iterator[HttpStack]:
    sockets = {group: _listening() for group in GROUPS}
    config = {
        str(s.getsockname()[1]): {
            "documents": policy_documents(g),
            "normalization": NORMALIZATION[g],
        }
        for g, s in sockets.items()
    }
    (tmp / "policies.json").write_text(json.dumps(config))
    (tmp / "table_wsgi.py").write_text(WSGI_APP)
    binds = [arg for s in sockets.values() for arg in ("--bind", f"fd://{s.fileno()}")]
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            *binds,
            *("--workers", "1", "--chdir", str(tmp), "--log-level", "warning"),
            "table_wsgi:app",
        ],
        pass_fds=[s.fileno() for s in sockets.values()],
        env={**os.environ, "TABLE_POLICIES": str(tmp / "policies.json")},
    )
    stack = HttpStack({g: s.getsockname()[1] for g, s in sockets.items()})
    try:
        ready = next(r for r in ROWS if r.id == "method-get-ok")
        _wait_started(lambda: proc.poll() is None and stack.send(ready)[0] == 200)
        yield stack
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for sock in sockets.values():
            sock.close()


def _echo_handler(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
    method = details.method

    def unary(request: bytes, context: Any) -> bytes:
        return json.dumps({"method": "POST", "host": "", "path": method}).encode()

    return grpc.unary_unary_rpc_method_handler(unary)


class _AnyMethod(grpc.GenericRpcHandler):
    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return _echo_handler(handler_call_details)


def _target(row: Row) -> str:
    """The request target of a row (a gRPC call's `:path`)."""
    return row.request.split(b" ", 2)[1].decode("latin-1")


class GrpcStack:
    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports

    def send(self, row: Row) -> Outcome:
        _, *headers = with_tokens(row.request).split(b"\r\n")
        path = _target(row)
        metadata = [
            (name.strip().lower().decode(), value.strip().decode())
            for name, _, value in (h.partition(b":") for h in headers)
            if name.strip().lower() in (b"authorization", b"x-user", b"x-jwt")
        ]
        with grpc.insecure_channel(f"127.0.0.1:{self.ports[row.policy]}") as channel:
            call = channel.unary_unary(path)
            try:
                reply = call(b"", metadata=metadata, timeout=10)
            except grpc.RpcError as exc:
                return GRPC_STATUS.get(exc.code(), -1), {}
        return 200, json.loads(reply)


def _grpc_sync() -> Iterator[GrpcStack]:
    servers, ports = [], {}
    for group in GROUPS:
        policies = partial(POLICY_SETS.__getitem__, group)
        interceptor = AuthorizationServerInterceptor(policies=policies)
        server = grpc.server(ThreadPoolExecutor(max_workers=4), interceptors=[interceptor])
        server.add_generic_rpc_handlers([_AnyMethod()])
        ports[group] = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
    try:
        yield GrpcStack(ports)
    finally:
        for server in servers:
            server.stop(grace=None)


def _grpc_aio() -> Iterator[GrpcStack]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[list[grpc.aio.Server], dict[str, int]]:
        servers, ports = [], {}
        for group in GROUPS:
            interceptor = AioAuthorizationServerInterceptor(
                policies=partial(POLICY_SETS.__getitem__, group)
            )
            server = grpc.aio.server(interceptors=[interceptor])
            server.add_generic_rpc_handlers([_AnyMethod()])
            ports[group] = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            servers.append(server)
        return servers, ports

    servers, ports = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield GrpcStack(ports)
    finally:

        async def stop() -> None:
            for server in servers:
                await server.stop(None)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


HTTP_STACKS = ["uvicorn-h11", "uvicorn-httptools", "gunicorn-wsgi"]
GRPC_STACKS = ["grpc-sync", "grpc-aio"]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Outcome]]:
    """Every applicable row on every stack, each stack started once."""
    starters: dict[str, Callable[[], Iterator[Any]]] = {
        "uvicorn-h11": lambda: _uvicorn("h11"),
        "uvicorn-httptools": lambda: _uvicorn("httptools"),
        "gunicorn-wsgi": lambda: _gunicorn(tmp_path_factory.mktemp("gunicorn")),
        "grpc-sync": _grpc_sync,
        "grpc-aio": _grpc_aio,
    }
    results: dict[str, dict[str, Outcome]] = {}
    for name, start in starters.items():
        rows = ROWS if name in HTTP_STACKS else [r for r in ROWS if r.grpc is True]
        running = start()
        stack = next(running)
        try:
            results[name] = {row.id: stack.send(row) for row in rows}
        finally:
            running.close()
    return results


def test_table_is_large_and_sourced() -> None:
    assert len(ROWS) >= 60
    assert len({r.id for r in ROWS}) == len(ROWS)
    assert all(r.source and r.policy in POLICIES for r in ROWS)
    assert sum(r.grpc is True for r in ROWS) >= 20


@pytest.mark.parametrize("stack", HTTP_STACKS + GRPC_STACKS)
def test_every_row_on_stack(outcomes: dict[str, dict[str, Outcome]], stack: str) -> None:
    wrong = []
    for row in ROWS:
        if row.id not in outcomes[stack]:
            continue
        status, seen = outcomes[stack][row.id]
        expected = _expected(row, stack)
        if status != expected:
            wrong.append(f"{row.id}: {status}, expected {expected}")
        elif status == 200 and stack in GRPC_STACKS and seen["path"] != _target(row):
            wrong.append(f"{row.id}: the handler of {seen['path']!r} ran")
        elif status == 200 and stack in GRPC_STACKS:
            continue
        elif status == 200 and row.path is not None and seen.get("path") != row.path:
            wrong.append(f"{row.id}: the app was handed path {seen.get('path')!r}")
        elif status == 200 and stack in HTTP_STACKS and seen.get("host") != row.host:
            wrong.append(f"{row.id}: the app was handed Host {seen.get('host')!r}")
    assert not wrong, "\n".join(wrong)


def _expected(row: Row, stack: str) -> int:
    if stack in GRPC_STACKS and row.grpc_status is not None:
        return row.grpc_status
    return row.status


def test_stacks_agree_on_every_row(outcomes: dict[str, dict[str, Outcome]]) -> None:
    """Every stack answers a row alike (gRPC only otherwise where the row says
    so, `grpc_status`), and hands its app the same path."""
    disagreements = []
    for row in ROWS:
        seen = {name: results[row.id] for name, results in outcomes.items() if row.id in results}
        statuses = {name: status for name, (status, _) in seen.items()}
        if row.grpc_status is not None:  # compared within each kind of stack
            statuses = {n: s for n, s in statuses.items() if n in HTTP_STACKS}
            grpc_statuses = {n: s for n, s in seen.items() if n in GRPC_STACKS}
            if len({s for s, _ in grpc_statuses.values()}) != 1:
                disagreements.append(f"{row.id}: gRPC {grpc_statuses}")
        if len(set(statuses.values())) != 1:
            disagreements.append(f"{row.id}: {statuses}")
        paths = {
            name: _as_asgi(name, echo["path"])
            for name, (_, echo) in seen.items()
            if echo and name in HTTP_STACKS
        }
        if len(set(paths.values())) > 1:
            disagreements.append(f"{row.id}: app paths {paths}")
    assert not disagreements, "\n".join(disagreements)


def _as_asgi(stack: str, path: str) -> str:
    """WSGI hands bytes as latin-1 characters (PEP 3333), ASGI as UTF-8 with
    replacement: compare paths in ASGI's terms."""
    if stack == "gunicorn-wsgi":
        return path.encode("latin-1").decode("utf-8", "replace")
    return path


def test_lower_case_delete_never_reaches_the_app(outcomes: dict[str, dict[str, Outcome]]) -> None:
    for stack in HTTP_STACKS:
        for row_id in ("method-lower-delete", "method-mixed-delete"):
            assert outcomes[stack][row_id] == (400, {}), (stack, row_id)
        assert outcomes[stack]["method-upper-delete"][0] == 403, stack
