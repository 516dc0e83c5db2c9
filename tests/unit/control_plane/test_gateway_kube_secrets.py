"""Which Secrets of a list the gateway agent serves, and under what names."""

from __future__ import annotations

import base64

from mesh_control_plane.gateway.kube_secrets import secrets_of


def _item(name: str, kind: str, **data: bytes) -> dict[str, object]:
    encoded = {k.replace("_", "."): base64.b64encode(v).decode() for k, v in data.items()}
    return {"metadata": {"name": name}, "type": kind, "data": encoded}


def test_tls_secrets_become_credentials_and_others_are_skipped() -> None:
    found = secrets_of(
        [
            _item("web", "kubernetes.io/tls", tls_crt=b"CRT", tls_key=b"KEY"),
            _item("mtls", "kubernetes.io/tls", tls_crt=b"C", tls_key=b"K", ca_crt=b"CA"),
            _item("opaque", "Opaque", tls_crt=b"C", tls_key=b"K"),
            _item("half", "kubernetes.io/tls", tls_crt=b"C"),  # no key: skipped
        ]
    )
    assert sorted(found) == ["kubernetes://mtls", "kubernetes://mtls-cacert", "kubernetes://web"]
    web = found["kubernetes://web"].tls_certificate
    assert web.certificate_chain.inline_bytes == b"CRT"
    assert web.private_key.inline_bytes == b"KEY"
    roots = found["kubernetes://mtls-cacert"].validation_context.trusted_ca.inline_bytes
    assert roots == b"CA"
