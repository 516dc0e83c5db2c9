"""The server stacks the inbound decision table runs on, and their echo apps.

Each starter is a generator: it starts one stack serving every policy group
(one port per group; gRPC: one server per group), yields an object whose
`send(row)` returns (status, what the app echoed), and stops what it started.
In-process stacks take their PolicySet directly; the xDS stacks
(`serve_asgi`, gunicorn's `MeshSyncWorker`) get theirs from a real control
plane, as the passthrough of a workload whose port nothing declares.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import jwt
import uvicorn
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from identities import listening_socket, serving_asgi
from inbound_table import ISSUER, NORMALIZATION, POLICIES, ROWS, Row
from mesh_control_plane.config.authorization import (
    authorization_policies_to_rbac,
    request_authentications_to_jwt,
)
from meshlab import LocalMesh

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.integrations._asgi import AuthorizationMiddleware
from proxyless_mesh.integrations._grpc_server import (
    AioAuthorizationServerInterceptor,
    AuthorizationServerInterceptor,
)
from proxyless_mesh.model import TlsMode
from proxyless_mesh.policy import PathNormalization, PolicySet
from proxyless_mesh.security._inbound import InboundTls
from proxyless_mesh.serving import MeshUvicornConfig

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ANY_ISSUER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_JWK = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
JWKS = json.dumps({"keys": [_JWK]})
_JWKS_BY_NAME = {
    "JWKS": JWKS,
    "ANY_ISSUER_JWKS": json.dumps(
        {"keys": [json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(ANY_ISSUER_KEY.public_key()))]}
    ),
}
_NOW = int(time.time())
TOKENS = {
    b"{TOKEN}": jwt.encode({"iss": ISSUER, "sub": "admin", "exp": _NOW + 3600}, KEY, "RS256"),
    b"{EXPIRED}": jwt.encode({"iss": ISSUER, "sub": "admin", "exp": _NOW - 3600}, KEY, "RS256"),
    b"{FORGED}": jwt.encode(
        {"iss": ISSUER, "sub": "admin", "exp": _NOW + 3600}, OTHER_KEY, "RS256"
    ),
    b"{ANY_ISS}": jwt.encode(
        {"iss": "https://elsewhere.example", "sub": "admin", "exp": _NOW + 3600},
        ANY_ISSUER_KEY,
        "RS256",
    ),
    b"{ANY_KEY}": jwt.encode(
        {"iss": ISSUER, "sub": "admin", "exp": _NOW + 3600}, ANY_ISSUER_KEY, "RS256"
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
            rule["jwks"] = _JWKS_BY_NAME[rule["jwks"]]
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


ECHO_WSGI = """
import json


def app(environ, start_response):
    environ["wsgi.input"].read()
    body = json.dumps({"method": environ["REQUEST_METHOD"], "host": environ.get("HTTP_HOST", ""),
                       "path": environ["PATH_INFO"]}).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


WSGI_APP = """
import json, os
from proxyless_mesh.integrations._wsgi import WsgiAuthorizationMiddleware
from table_echo import app as echo
from proxyless_mesh.policy import PathNormalization, PolicySet
from mesh_control_plane.config.authorization import (
    authorization_policies_to_rbac, request_authentications_to_jwt)

with open(os.environ["TABLE_POLICIES"]) as f:
    CONFIG = json.load(f)


def _policy_set(entry):
    docs = entry["documents"]
    return PolicySet(
        authorization_policies_to_rbac([d for d in docs if d["kind"] == "AuthorizationPolicy"]),
        request_authentications_to_jwt([d for d in docs if d["kind"] == "RequestAuthentication"]),
        PathNormalization(entry["normalization"]),
    )


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
                while not _complete(reply) and (chunk := s.recv(65536)):
                    reply += chunk
            except ConnectionResetError:
                pass
        if not reply:
            return 0, {}
        head, _, body = reply.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, json.loads(body) if status == 200 else {}


def _complete(reply: bytes) -> bool:
    """Whether `reply` holds a whole response framed by Content-Length: Envoy
    closes a connection 1 s after a local reply (its delayed close), and
    waiting for that close cost a second per refused row."""
    head, found, body = reply.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def _stop(procs: list[subprocess.Popen[bytes]], sockets: Iterable[socket.socket]) -> None:
    """Terminate, wait (kill after 15 s), close the listening sockets."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for sock in sockets:
        sock.close()


def uvicorn_stack(http: str) -> Iterator[HttpStack]:
    sockets = {group: listening_socket() for group in GROUPS}
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


def gunicorn_stack(tmp: Path) -> Iterator[HttpStack]:
    sockets = {group: listening_socket() for group in GROUPS}
    config = {
        str(s.getsockname()[1]): {
            "documents": policy_documents(g),
            "normalization": NORMALIZATION[g],
        }
        for g, s in sockets.items()
    }
    (tmp / "policies.json").write_text(json.dumps(config))
    (tmp / "table_wsgi.py").write_text(WSGI_APP)
    (tmp / "table_echo.py").write_text(ECHO_WSGI)
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
        _stop([proc], sockets.values())


def _echo_handler(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
    method = details.method

    def unary(request: bytes, context: Any) -> bytes:
        return json.dumps({"method": "POST", "host": "", "path": method}).encode()

    return grpc.unary_unary_rpc_method_handler(unary)


class _AnyMethod(grpc.GenericRpcHandler):
    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return _echo_handler(handler_call_details)


def target_of(row: Row) -> str:
    """The request target of a row (a gRPC call's `:path`)."""
    return row.request.split(b" ", 2)[1].decode("latin-1")


class GrpcStack:
    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports

    def send(self, row: Row) -> Outcome:
        _, *headers = with_tokens(row.request).split(b"\r\n")
        path = target_of(row)
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


def grpc_sync_stack() -> Iterator[GrpcStack]:
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


def grpc_aio_stack() -> Iterator[GrpcStack]:
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


# -- the stacks as shipped, following a real control plane --------------------------

# "deny-merge" needs a control plane with a mesh-wide MERGE_SLASHES: not run here.
XDS_GROUPS = ["allow", "deny", "jwt"]
NAMESPACE = "foo"


@contextlib.contextmanager
def control_plane(workdir: Path) -> Iterator[LocalMesh]:
    """A `meshctl control-plane` whose policies select each group's workload
    by the label app=<group>; no ServiceEntry declares any of their ports."""
    lab = LocalMesh(workdir)
    docs = []
    for group in XDS_GROUPS:
        for doc in policy_documents(group):
            doc["spec"]["selector"] = {"matchLabels": {"app": group}}
            doc["metadata"]["name"] = f"{group}-{doc['metadata']['name']}"
            docs.append(json.dumps(doc))
    lab.write_config("policies.yaml", "\n---\n".join(docs))
    try:
        lab.start_control_plane()
        yield lab
    finally:
        lab.close()


def _bootstrap(lab: LocalMesh, node: str, group: str) -> Path:
    return lab.bootstrap(node, NAMESPACE, "table", labels={"app": group})


def serve_asgi_stack(lab: LocalMesh, http: str) -> Iterator[HttpStack]:
    """`serve_asgi` (uvicorn with the library's protocol class), one workload
    per group, plaintext (no identity), policy from xDS."""
    with contextlib.ExitStack() as stack:
        ports = {}
        for group in XDS_GROUPS:
            mesh = Mesh(Bootstrap.from_file(_bootstrap(lab, f"{http}-{group}", group)))
            stack.enter_context(mesh)
            sock = listening_socket()
            stack.callback(sock.close)
            ports[group] = sock.getsockname()[1]
            stack.enter_context(serving_asgi(echo_asgi, mesh, sock, http=http, port_name=None))
        yield HttpStack(ports)  # a request waits in the backlog until its server serves


def mesh_sync_worker_stack(lab: LocalMesh) -> Iterator[HttpStack]:
    """gunicorn with `MeshSyncWorker`, one process per group."""
    (lab.workdir / "table_echo.py").write_text(ECHO_WSGI)
    procs: list[subprocess.Popen[bytes]] = []
    sockets = {group: listening_socket() for group in XDS_GROUPS}
    try:
        for group, sock in sockets.items():
            env = dict(os.environ, GRPC_XDS_BOOTSTRAP=str(_bootstrap(lab, f"wsgi-{group}", group)))
            env.pop("GRPC_XDS_BOOTSTRAP_CONFIG", None)
            procs.append(
                subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "gunicorn"),
                        *("-k", "proxyless_mesh.gunicorn.MeshSyncWorker"),
                        *("--bind", f"fd://{sock.fileno()}", "--workers", "1"),
                        *("--chdir", str(lab.workdir), "--log-level", "warning"),
                        "table_echo:app",
                    ],
                    pass_fds=(sock.fileno(),),
                    env=env,
                )
            )
        yield HttpStack({g: s.getsockname()[1] for g, s in sockets.items()})
    finally:
        _stop(procs, sockets.values())
