"""RequestAuthentication `jwksUri`, end to end on 127.0.0.1.

A local HTTP server publishes a JWKS; the config dir holds a
RequestAuthentication whose `jwksUri` points at it and an AuthorizationPolicy
that requires a request principal. A real `meshctl control-plane` (with its
CA) fetches the JWKS and inlines it into the reviews workload's inbound
listener; the reviews ASGI app under `serve_asgi` then accepts a token signed
by the published key (200) and answers 401 to one signed by another key.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from identities import (
    REVIEWS_HOST,
    listening_socket,
    service_entry,
    serving_asgi,
    start_control_plane,
    workload_mesh,
)
from jwt.algorithms import ECAlgorithm
from meshlab import LocalMesh

HOST = REVIEWS_HOST
ISSUER = "https://idp.example"


def _jwks(key: ec.EllipticCurvePrivateKey) -> bytes:
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    return json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}).encode()


def _token(key: ec.EllipticCurvePrivateKey) -> str:
    claims = {"iss": ISSUER, "sub": "alice"}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})


@contextlib.contextmanager
def _jwks_server(body: bytes) -> Iterator[str]:
    """An identity provider's JWKS endpoint; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/jwks" else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/jwks"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _config(port: int, jwks_uri: str) -> str:
    service = service_entry(HOST, port)
    authn = {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": "shop"},
        "spec": {"jwtRules": [{"issuer": ISSUER, "jwksUri": jwks_uri}]},
    }
    authz = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "require-jwt", "namespace": "shop"},
        "spec": {
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"requestPrincipals": [f"{ISSUER}/*"]}}]}],
        },
    }
    return "\n---\n".join(json.dumps(d) for d in (service, authn, authz))


async def _hello(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.mark.timeout(120)
def test_tokens_are_checked_against_the_fetched_jwks(lab: LocalMesh) -> None:
    published, other = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    sock = listening_socket()
    with _jwks_server(_jwks(published)) as uri, contextlib.closing(sock):
        lab.write_config("mesh.yaml", _config(sock.getsockname()[1], uri))
        start_control_plane(lab)
        reviews = workload_mesh(lab, "reviews-1", "reviews")
        frontend = workload_mesh(lab, "frontend-1", "frontend")
        with reviews, frontend, serving_asgi(_hello, reviews, sock):
            client = httpx.Client(transport=frontend.httpx_transport(), timeout=30.0)
            with client:

                def get(token: str | None) -> httpx.Response:
                    headers = {"authorization": f"Bearer {token}"} if token else {}
                    return client.get(f"http://{HOST}/api", headers=headers)

                ok = get(_token(published))
                assert ok.status_code == 200 and ok.text == "hello"
                assert get(_token(other)).status_code == 401
                assert get(None).status_code == 403  # no principal: the policy denies
