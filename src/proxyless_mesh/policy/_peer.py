"""The peer's SPIFFE ID from its verified certificate (URI SAN).

Until the mTLS layer hands the identity over directly, the integrations find
it where servers expose the peer certificate: the ASGI `tls` extension's
`client_cert_chain` (PEM), or gRPC's auth context (PEM or the SAN list).
The certificate must already have been verified by the TLS layer: this only
reads it.
"""

from __future__ import annotations

from collections.abc import Iterable

SPIFFE_SCHEME = "spiffe://"


def spiffe_id_from_pem(pem: str | bytes) -> str | None:
    """The single `spiffe://` URI SAN of a PEM certificate, else None (a
    certificate with several SPIFFE IDs is invalid per the SPIFFE spec)."""
    # Here: a plaintext mesh never loads the certificate reader (issue 25).
    from proxyless_mesh.security import Certificate

    try:
        cert = Certificate.from_pem(pem)
    except ValueError:
        return None
    return _single_spiffe(cert.uris)


def spiffe_id_from_names(names: Iterable[str | bytes]) -> str | None:
    """The single `spiffe://` name among SAN strings (gRPC's auth context)."""
    decoded = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
    return _single_spiffe(decoded)


def _single_spiffe(uris: Iterable[str]) -> str | None:
    found = [u for u in uris if u.startswith(SPIFFE_SCHEME)]
    return found[0] if len(found) == 1 else None
