"""`peer_identity` reads the caller's SPIFFE ID where the mesh's servers put it."""

from __future__ import annotations

from proxyless_mesh import peer_identity

FRONTEND = "spiffe://cluster.local/ns/default/sa/frontend"


def test_asgi_scope_tls_extension() -> None:
    scope = {"type": "http", "extensions": {"tls": {"spiffe_id": FRONTEND}}}
    assert peer_identity(scope) == FRONTEND


def test_wsgi_environ_key() -> None:
    assert peer_identity({"proxyless_mesh.peer_principal": FRONTEND}) == FRONTEND
    assert peer_identity({"proxyless_mesh.peer_principal": None}) is None


def test_plaintext_has_no_identity() -> None:
    assert peer_identity({"type": "http", "extensions": {}}) is None
    assert peer_identity({"type": "http"}) is None
    assert peer_identity({"REQUEST_METHOD": "GET"}) is None
    no_cert = {"type": "http", "extensions": {"tls": {"spiffe_id": None, "client_cert_chain": []}}}
    assert peer_identity(no_cert) is None
