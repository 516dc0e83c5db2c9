"""ASGI middleware edges (lifespan, websocket, rewrite) and SPIFFE ID parsing."""

from __future__ import annotations

import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mesh_control_plane.config.authorization import authorization_policies_to_rbac

from proxyless_mesh.integrations._asgi import AuthorizationMiddleware, tls_peer_principal
from proxyless_mesh.policy import PolicySet
from proxyless_mesh.policy._peer import spiffe_id_from_names, spiffe_id_from_pem

SPIFFE = "spiffe://cluster.local/ns/foo/sa/sleep"


def _cert_pem(*uris: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "w")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if uris:
        sans = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_spiffe_id_from_certificates() -> None:
    assert spiffe_id_from_pem(_cert_pem(SPIFFE, "https://x")) == SPIFFE
    assert spiffe_id_from_pem(_cert_pem()) is None
    assert spiffe_id_from_pem(_cert_pem(SPIFFE, SPIFFE + "2")) is None  # ambiguous
    assert spiffe_id_from_pem("garbage") is None
    assert spiffe_id_from_names([b"dns.example", SPIFFE.encode()]) == SPIFFE


def test_tls_extension_is_the_default_identity() -> None:
    scope = {"extensions": {"tls": {"client_cert_chain": [_cert_pem(SPIFFE)]}}}
    assert tls_peer_principal(scope) == SPIFFE
    assert tls_peer_principal({}) is None


NS_ONLY = PolicySet(
    authorization_policies_to_rbac(
        [
            {
                "metadata": {"name": "p", "namespace": "foo"},
                "spec": {"rules": [{"from": [{"source": {"namespaces": ["foo"]}}]}]},
            }
        ]
    )
)


async def _run(scope: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []

    async def app(s: Any, receive: Any, send: Any) -> None:
        seen.append(s)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        sent.append(message)

    await AuthorizationMiddleware(app, policies=lambda: NS_ONLY)(scope, receive, send)
    return seen, sent


def _scope(kind: str, cert: str | None = None, path: bytes = b"/") -> dict[str, Any]:
    ext = {"tls": {"client_cert_chain": [cert]}} if cert else {}
    return {
        "type": kind,
        "method": "GET",
        "path": path.decode(),
        "raw_path": path,
        "query_string": b"",
        "headers": [(b"host", b"svc")],
        "client": ("127.0.0.1", 5),
        "server": ("127.0.0.1", 80),
        "extensions": ext,
    }


async def test_lifespan_passes_through() -> None:
    seen, _ = await _run({"type": "lifespan"})
    assert seen == [{"type": "lifespan"}]


async def test_websocket_is_authorized_too() -> None:
    seen, sent = await _run(_scope("websocket"))
    assert not seen and sent == [{"type": "websocket.close", "code": 1008}]
    seen, _ = await _run(_scope("websocket", _cert_pem(SPIFFE)))
    assert len(seen) == 1


async def test_http_denied_and_allowed_with_rewritten_path() -> None:
    seen, sent = await _run(_scope("http", path=b"/a"))
    assert not seen and sent[0]["status"] == 403 and sent[1]["body"] == b"RBAC: access denied"
    seen, _ = await _run(_scope("http", _cert_pem(SPIFFE), b"/x/../a%20b"))
    assert seen[0]["path"] == "/a b" and seen[0]["raw_path"] == b"/a%20b"
