"""Test helpers for workload identities: the control plane's CA hands out
`cryptography` certificates, the library reads its own `Certificate`."""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from proxyless_mesh.security import Certificate


def as_certificates(certs: Iterable[x509.Certificate]) -> tuple[Certificate, ...]:
    """The library's view of the CA's certificates (same DER)."""
    return tuple(Certificate.from_der(c.public_bytes(Encoding.DER)) for c in certs)
