"""RequestAuthentication jwksUri: the control plane fetches (bounded), caches,
refreshes and inlines the JWKS; failures keep the last keys or fail closed.

Fetches go to a real HTTP server on 127.0.0.1; the resolver's cache timing is
driven by a fake clock and a counting fetch function.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from mesh_control_plane.config import ConfigLoadError, MeshConfig, parse_documents
from mesh_control_plane.config.authorization import request_authentications_to_jwt
from mesh_control_plane.config.jwks import (
    JwksFetchError,
    JwksResolver,
    fail_closed_jwks,
    fetch_jwks,
)

from proxyless_mesh.policy._jwt import JwtAuthenticator, JwtAuthError

ISSUER = "https://issuer.example"


def _jwks(key: ec.EllipticCurvePrivateKey, kid: str = "k1") -> str:
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    return json.dumps({"keys": [{**jwk, "kid": kid, "alg": "ES256", "use": "sig"}]})


def _token(key: ec.EllipticCurvePrivateKey, kid: str = "k1") -> str:
    claims = {"iss": ISSUER, "sub": "alice"}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


class _Server:
    """Serves `routes` (path -> (status, body)); /slow blocks until released."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes]] = {}
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/slow":
                    outer.release.wait(10)
                status, body = outer.routes.get(self.path, (404, b"no"))
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    thread = threading.Thread(target=s.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield s
    finally:
        s.release.set()
        s.httpd.shutdown()
        s.httpd.server_close()
        thread.join(5)


def test_fetch_returns_the_served_jwks(server: _Server) -> None:
    text = _jwks(ec.generate_private_key(ec.SECP256R1()))
    server.routes["/jwks"] = (200, text.encode())
    assert fetch_jwks(f"{server.url}/jwks") == text


@pytest.mark.parametrize(
    ("route", "body", "reason"),
    [
        ("/missing", None, "HTTP status 404"),
        ("/big", b'{"keys": [' + b" " * 5000 + b"]}", "larger than 1000 bytes"),
        ("/html", b"<html>", "not JSON"),
        ("/empty", b'{"keys": []}', "non-empty"),
    ],
)
def test_fetch_refuses_bad_answers(
    server: _Server, route: str, body: bytes | None, reason: str
) -> None:
    if body is not None:
        server.routes[route] = (200, body)
    with pytest.raises(JwksFetchError, match=reason):
        fetch_jwks(f"{server.url}{route}", max_bytes=1000)


def test_fetch_is_bounded_in_time_and_scheme(server: _Server) -> None:
    with pytest.raises(JwksFetchError, match="Timeout"):
        fetch_jwks(f"{server.url}/slow", timeout=0.2)
    with pytest.raises(JwksFetchError, match="http and https"):
        fetch_jwks("file:///etc/passwd")


def _config(uri: str, *, file: str = "ra.yaml") -> MeshConfig:
    doc = yaml.safe_load(
        f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  jwtRules: [{{issuer: "{ISSUER}", jwksUri: "{uri}"}}]
"""
    )
    return parse_documents([(file, doc)])


class _Fetcher:
    def __init__(self, answer: str) -> None:
        self.answer: str | None = answer
        self.calls = 0

    def __call__(self, uri: str) -> str:
        self.calls += 1
        if self.answer is None:
            raise JwksFetchError("connection refused")
        return self.answer


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _authenticator(config: MeshConfig) -> JwtAuthenticator:
    resources = [ra.resource() for ra in config.request_authentications]
    return JwtAuthenticator(request_authentications_to_jwt(resources))


def test_resolver_inlines_caches_and_refreshes() -> None:
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    fetch, clock = _Fetcher(_jwks(old)), _Clock()
    resolver = JwksResolver(fetch, refresh_interval=300, retry_interval=30, clock=clock)
    config = _config("http://idp/jwks")
    resolved, problems = resolver.resolve(config)
    assert problems == () and fetch.calls == 1
    assert resolved.request_authentications[0].spec["jwtRules"][0]["jwks"] == _jwks(old)
    good = {"authorization": f"Bearer {_token(old)}"}
    result = _authenticator(resolved).authenticate(good, "")
    assert result is not None and result.principal == f"{ISSUER}/alice"
    clock.now = 299.0
    assert resolver.resolve(config)[0] == resolved and fetch.calls == 1  # cached
    fetch.answer, clock.now = _jwks(new), 300.0
    rotated, _ = resolver.resolve(config)
    assert fetch.calls == 2
    assert rotated.request_authentications[0].spec["jwtRules"][0]["jwks"] == _jwks(new)
    with pytest.raises(JwtAuthError):
        _authenticator(rotated).authenticate(good, "")


def test_a_failed_refresh_keeps_the_last_keys_and_reports() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    fetch, clock = _Fetcher(_jwks(key)), _Clock()
    resolver = JwksResolver(fetch, refresh_interval=300, retry_interval=30, clock=clock)
    config = _config("http://idp/jwks")
    first, _ = resolver.resolve(config)
    fetch.answer, clock.now = None, 300.0
    kept, problems = resolver.resolve(config)
    assert kept == first
    assert [str(p) for p in problems] == [
        "ra.yaml: RequestAuthentication shop/jwt: spec.jwtRules[0].jwksUri: could not fetch "
        "http://idp/jwks: connection refused; keeping the JWKS fetched before"
    ]
    clock.now = 310.0  # within the retry interval: no new attempt
    resolver.resolve(config)
    assert fetch.calls == 2
    fetch.answer, clock.now = _jwks(key), 330.0
    assert resolver.resolve(config) == (first, ()) and fetch.calls == 3


def test_never_fetched_fails_closed() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    fetch = _Fetcher(_jwks(key))
    fetch.answer = None
    resolved, problems = JwksResolver(fetch).resolve(_config("http://idp/jwks"))
    rule = resolved.request_authentications[0].spec["jwtRules"][0]
    assert rule["jwks"] == fail_closed_jwks()
    assert [(p.file, p.resource, p.field) for p in problems] == [
        ("ra.yaml", "RequestAuthentication shop/jwt", "spec.jwtRules[0].jwksUri")
    ]
    assert "are rejected until it is" in problems[0].message
    with pytest.raises(JwtAuthError):
        _authenticator(resolved).authenticate({"authorization": f"Bearer {_token(key)}"}, "")


def test_a_rule_without_issuer_fails_closed_then_accepts_any_iss_its_keys_verify() -> None:
    """No issuer: the fetched keys alone decide. Until they are fetched every
    token is refused, whatever its `iss`, and the problem says so."""
    key = ec.generate_private_key(ec.SECP256R1())
    fetch, clock = _Fetcher(_jwks(key)), _Clock()
    fetch.answer = None
    resolver = JwksResolver(fetch, refresh_interval=300, retry_interval=30, clock=clock)
    config = _config("http://idp/jwks")
    (ra,) = config.request_authentications
    rule = {"jwksUri": "http://idp/jwks"}
    config = replace(config, request_authentications=(replace(ra, spec={"jwtRules": [rule]}),))
    unfetched, problems = resolver.resolve(config)
    assert [p.message for p in problems] == [
        "could not fetch http://idp/jwks: connection refused; the tokens this rule accepts "
        "(any issuer) are rejected until it is"
    ]
    token = jwt.encode({"iss": "https://elsewhere.example", "sub": "bob"}, key, "ES256")
    with pytest.raises(JwtAuthError):
        _authenticator(unfetched).authenticate({"authorization": f"Bearer {token}"}, "")
    fetch.answer, clock.now = _jwks(key), 30.0
    fetched, problems = resolver.resolve(config)
    assert problems == ()
    result = _authenticator(fetched).authenticate({"authorization": f"Bearer {token}"}, "")
    assert result is not None and result.principal == "https://elsewhere.example/bob"


def test_configs_without_jwks_uri_are_untouched() -> None:
    fetch = _Fetcher("unused")
    config = parse_documents([])
    assert JwksResolver(fetch).resolve(config) == (config, ()) and fetch.calls == 0


def test_loader_accepts_http_jwks_uri_and_refuses_other_schemes() -> None:
    (ra,) = _config("https://idp/jwks").request_authentications
    assert ra.spec["jwtRules"][0]["jwksUri"] == "https://idp/jwks"
    assert "jwks" not in ra.spec["jwtRules"][0]  # filled in only when applied
    with pytest.raises(ConfigLoadError) as caught:
        _config("ftp://idp/jwks")
    assert [str(p) for p in caught.value.problems] == [
        "ra.yaml: RequestAuthentication shop/jwt: spec.jwtRules[0].jwksUri: "
        "must be an http:// or https:// URL"
    ]
