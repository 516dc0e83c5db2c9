"""The inbound middleware in front of real apps under real servers.

An ASGI app under uvicorn and a WSGI app under gunicorn, both on 127.0.0.1
with a pre-bound port-0 socket, enforce the same Istio policies. Requests are
written as raw bytes on a socket (an HTTP client library would normalize the
tricky targets away). Each app answers which resource it served: the bypass
corpus checks that none of the tricks reaches the protected one.

Peer identity: until mTLS lands, a test-only hook gives each client
connection an identity by its source port (the test binds the client socket
first and records the port in peers.json); no header carries it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from processes import stop

ISSUER = "https://issuer.example"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_JWK = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
_JWK["kid"] = "k1"
JWKS = json.dumps({"keys": [_JWK]})
OPS = "spiffe://cluster.local/ns/ops/sa/operator"
DEV = "spiffe://cluster.local/ns/dev/sa/tool"

APP_SOURCE = '''
import json, os
import yaml
from proxyless_mesh.policy import PolicySet
from mesh_control_plane.config.authorization import (
    authorization_policies_to_rbac, request_authentications_to_jwt)
from proxyless_mesh.integrations._asgi import AuthorizationMiddleware
from proxyless_mesh.integrations._wsgi import WsgiAuthorizationMiddleware

CONFIG = os.environ["INBOUND_TEST_CONFIG"]


def _load():
    with open(os.path.join(CONFIG, "policies.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    authz = [d for d in docs if d["kind"] == "AuthorizationPolicy"]
    authn = [d for d in docs if d["kind"] == "RequestAuthentication"]
    return PolicySet(authorization_policies_to_rbac(authz), request_authentications_to_jwt(authn))


POLICIES = _load()


def peer_of(port):
    """Test-only identity source: the client's source port -> SPIFFE ID."""
    try:
        with open(os.path.join(CONFIG, "peers.json")) as f:
            return json.load(f).get(str(port))
    except FileNotFoundError:
        return None


def resource(path, host):
    if host.lower().split(":")[0].rstrip(".") == "secret.com":
        return "secret"
    if path == "/admin" or path.startswith("/admin/"):
        return "admin"
    if path == "/public" or path.startswith("/public/"):
        return "public"
    return "other"


def describe(path, host, headers):
    return json.dumps({
        "resource": resource(path, host), "path": path,
        "authorization": headers.get("authorization"), "sub": headers.get("x-jwt-sub"),
    }).encode()


async def _asgi_inner(scope, receive, send):
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    body = describe(scope["path"], headers.get("host", ""), headers)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


asgi_app = AuthorizationMiddleware(
    _asgi_inner, policies=lambda: POLICIES, peer_principal=lambda s: peer_of(s["client"][1]))


def _wsgi_inner(environ, start_response):
    headers = {
        k[5:].lower().replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")
    }
    body = describe(environ["PATH_INFO"], environ.get("HTTP_HOST", ""), headers)
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


_guarded = WsgiAuthorizationMiddleware(_wsgi_inner, policies=lambda: POLICIES)


def wsgi_app(environ, start_response):
    environ["proxyless_mesh.peer_principal"] = peer_of(environ.get("REMOTE_PORT"))
    return _guarded(environ, start_response)
'''

DENY_POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
  - to: [{operation: {hosts: ["secret.com"]}}]
"""

ALLOW_POLICIES = f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: foo}}
spec:
  jwtRules:
  - issuer: "{ISSUER}"
    audiences: [api]
    jwks: '{JWKS}'
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-public, namespace: foo}}
spec:
  rules: [{{to: [{{operation: {{paths: ["/public", "/public/*"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-admin, namespace: foo}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/admin"]}}}}]
    to: [{{operation: {{paths: ["/admin", "/admin/*"], methods: ["GET"]}}}}]
  - from: [{{source: {{namespaces: ["ops"]}}}}]
    to: [{{operation: {{paths: ["/admin", "/admin/*"]}}}}]
    when: [{{key: "request.headers[x-role]", values: ["admin"]}}]
"""

# Targets aimed at /admin. None may reach the admin resource without credentials.
PATH_CORPUS = [
    b"/admin",
    b"/admin/",
    b"/admin/x",
    b"/admin/../admin",
    b"/x/../admin",
    b"/public/../admin",
    b"/public/../../admin/x",
    b"/../admin",
    b"/a/b/../../admin",
    b"//admin",
    b"///admin/x",
    b"/ADMIN",
    b"/Admin/x",
    b"/%61dmin",
    b"/ad%6Din/x",
    b"/%2561dmin",
    b"/admin%2F",
    b"/admin%2fx",
    b"/%2Fadmin",
    b"/public%2F..%2Fadmin",
    b"/public/..%2fadmin",
    b"/public/..%5cadmin",
    b"/%5Cadmin",
    b"/%5cadmin/x",
    b"\\admin",
    b"/\\admin",
    b"/public\\..\\admin",
    b"/admin#x",
    b"/admin#/../public",
    b"/admin;x",
    b"/admin;/x",
    b"/admin/.",
    b"/admin/./x",
    b"/./admin",
    b"/%2e/admin",
    b"/%2e%2e/admin",
    b"/public/%2e%2e/admin",
    b"/public/%2E%2E/admin",
    b"/public/.%2e/admin",
    b"/public/%252e%252e/admin",
    b"/admin?x=1",
    b"/admin?",
    b"/admin?/../public",
    b"/admin%00",
    b"/public/..%00/admin",
    b"/admin%zz",
    b"/admin%",
    b"/admin%09",
    b"/%c0%ae%c0%ae/admin",
    b"/admin/..;/admin",
]

HOST_CORPUS = [
    "secret.com",
    "Secret.COM:80",
    "secret.com.",
    "SECRET.COM.:8080",
]


def _tok(key: Any = KEY, alg: str = "RS256", **claims: Any) -> str:
    body = {"iss": ISSUER, "sub": "admin", "aud": "api", "exp": int(time.time()) + 86400, **claims}
    if alg == "none":
        return jwt.encode(body, None, algorithm="none")
    return jwt.encode(body, key, algorithm=alg, headers={"kid": "k1"})


BAD_TOKENS = {
    "alg-none": lambda: _tok(alg="none"),
    "expired": lambda: _tok(exp=int(time.time()) - 3600),
    "wrong-iss": lambda: _tok(iss="https://evil.example"),
    "wrong-aud": lambda: _tok(aud="other"),
    "bad-signature": lambda: _tok(OTHER_KEY),
    "hs256-with-public-key": lambda: jwt.encode(
        {"iss": ISSUER, "sub": "admin", "aud": "api"}, "k" * 64, algorithm="HS256"
    ),
}


@dataclass
class Reply:
    status: int
    body: dict[str, Any]


@dataclass
class Server:
    port: int
    config: Path

    def request(
        self,
        target: bytes,
        headers: list[tuple[str, str]] | None = None,
        peer: str | None = None,
        method: bytes = b"GET",
    ) -> Reply:
        with socket.socket() as s:
            s.settimeout(10)
            s.bind(("127.0.0.1", 0))
            if peer is not None:
                self._register(s.getsockname()[1], peer)
            s.connect(("127.0.0.1", self.port))
            lines = [method + b" " + target + b" HTTP/1.1"]
            hdrs = headers if headers is not None else [("Host", "api.example.com")]
            lines += [f"{k}: {v}".encode("latin-1") for k, v in hdrs]
            lines += [b"Connection: close", b"", b""]
            s.sendall(b"\r\n".join(lines))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        if not data:
            return Reply(0, {})
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        try:
            parsed = json.loads(body) if status == 200 else {}
        except ValueError:
            parsed = {"raw": body.decode("latin-1")}
        return Reply(status, parsed)

    def _register(self, port: int, peer: str) -> None:
        path = self.config / "peers.json"
        peers = json.loads(path.read_text()) if path.exists() else {}
        peers[str(port)] = peer
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(peers))
        tmp.replace(path)


def _config_dir(tmp_path: Path, policies: str) -> Path:
    (tmp_path / "policies.yaml").write_text(policies)
    (tmp_path / "inbound_app.py").write_text(APP_SOURCE)
    return tmp_path


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def _start_uvicorn(config: Path) -> Iterator[Server]:
    os.environ["INBOUND_TEST_CONFIG"] = str(config)
    sys.path.insert(0, str(config))
    sys.modules.pop("inbound_app", None)
    try:
        import inbound_app

        sock = _listening_socket()
        server = uvicorn.Server(uvicorn.Config(inbound_app.asgi_app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            yield Server(sock.getsockname()[1], config)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()
    finally:
        sys.path.remove(str(config))
        sys.modules.pop("inbound_app", None)
        os.environ.pop("INBOUND_TEST_CONFIG", None)


def _start_gunicorn(config: Path) -> Iterator[Server]:
    sock = _listening_socket()
    env = {**os.environ, "INBOUND_TEST_CONFIG": str(config)}
    gunicorn = Path(sys.executable).parent / "gunicorn"
    proc = subprocess.Popen(
        [
            str(gunicorn),
            "--bind",
            f"fd://{sock.fileno()}",
            "--workers",
            "1",
            "--chdir",
            str(config),
            "--log-level",
            "warning",
            "inbound_app:wsgi_app",
        ],
        pass_fds=(sock.fileno(),),
        env=env,
    )
    try:
        yield Server(sock.getsockname()[1], config)
    finally:
        stop(proc)
        sock.close()


SERVERS = {"uvicorn-asgi": _start_uvicorn, "gunicorn-wsgi": _start_gunicorn}


@pytest.fixture(params=sorted(SERVERS))
def deny_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    yield from SERVERS[request.param](_config_dir(tmp_path, DENY_POLICIES))


@pytest.fixture(params=sorted(SERVERS))
def allow_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    yield from SERVERS[request.param](_config_dir(tmp_path, ALLOW_POLICIES))


def _never_protected(reply: Reply, protected: str = "admin") -> None:
    assert not (reply.status == 200 and reply.body.get("resource") == protected), reply


def test_deny_policy_controls(deny_server: Server) -> None:
    ok = deny_server.request(b"/public/x")
    assert (ok.status, ok.body["resource"]) == (200, "public")
    rewritten = deny_server.request(b"/x/../public/./a%2Db?q=1")
    assert (rewritten.status, rewritten.body["path"]) == (200, "/public/a-b")
    assert deny_server.request(b"/admin").status == 403


def test_deny_policy_bypass_corpus(deny_server: Server) -> None:
    for target in PATH_CORPUS:
        _never_protected(deny_server.request(target))
    for host in HOST_CORPUS:
        reply = deny_server.request(b"/public", [("Host", host)])
        assert reply.status == 403, host
    dup_host = deny_server.request(b"/public", [("Host", "ok.com"), ("Host", "secret.com")])
    _never_protected(dup_host, "secret")


def test_allow_policy_controls(allow_server: Server) -> None:
    reply = allow_server.request(
        b"/admin/x", [("Host", "api"), ("Authorization", f"Bearer {_tok()}"), ("X-Jwt-Sub", "x")]
    )
    assert (reply.status, reply.body["resource"]) == (200, "admin")
    assert reply.body["authorization"] is None  # forwardOriginalToken: false
    assert reply.body["sub"] == "admin"  # outputClaimToHeaders, client copy replaced
    ops = allow_server.request(b"/admin", [("Host", "api"), ("X-Role", "admin")], peer=OPS)
    assert (ops.status, ops.body["resource"]) == (200, "admin")
    assert allow_server.request(b"/public").status == 200
    assert allow_server.request(b"/elsewhere").status == 403


def test_allow_policy_bypass_corpus(allow_server: Server) -> None:
    for target in PATH_CORPUS:
        _never_protected(allow_server.request(target))
        _never_protected(allow_server.request(target, peer=DEV))
    for name, make in BAD_TOKENS.items():
        reply = allow_server.request(
            b"/admin", [("Host", "a"), ("Authorization", f"Bearer {make()}")]
        )
        assert reply.status == 401, name
    user = allow_server.request(
        b"/admin", [("Host", "a"), ("Authorization", f"Bearer {_tok(sub='u')}")]
    )
    assert user.status == 403
    post = allow_server.request(
        b"/admin", [("Host", "a"), ("Authorization", f"Bearer {_tok()}")], method=b"POST"
    )
    assert post.status == 403
    for headers in (
        [("Host", "a"), ("X-Role", "user"), ("X-Role", "admin")],
        [("Host", "a"), ("X-Role", "admin,user")],
        [("Host", "a"), ("X-Role", "Admin")],
    ):
        _never_protected(allow_server.request(b"/admin", headers, peer=OPS))
    _never_protected(
        allow_server.request(b"/admin", [("Host", "a"), ("X-Role", "admin")], peer=DEV)
    )
    _never_protected(allow_server.request(b"/admin", [("Host", "a"), ("X-Role", "admin")]))
