"""Workload keys and CSRs. The private key is made here and never serialised
except into this process's own TLS stack, the 0600 files grpcio reads, and the
0600 certificate cache for a restart (see _cert_cache.py).

The key lives in the native core (`proxyless_mesh_native.EcKey`: P-256 from
the OS's random source, ECDSA-SHA256, a hand-encoded PKCS#10 CSR); the
`WorkloadKey` protocol is its type here. tests/property/
test_native_identity_props.py demands its CSR be byte for byte the one
`cryptography` builds for the same key, below the signature.
"""

from __future__ import annotations

from typing import Any, Protocol

from proxyless_mesh import native_core
from proxyless_mesh.security._certificates import pem_encode
from proxyless_mesh.security._spiffe import SpiffeId

__all__ = [
    "WorkloadKey",
    "load_private_key",
    "make_csr",
    "new_private_key",
]


class WorkloadKey(Protocol):
    """An ECDSA P-256 private key, used without exposing it."""

    def sign(self, data: bytes) -> bytes:
        """ECDSA-SHA256 over `data`, DER-encoded."""
        ...

    def public_key_der(self) -> bytes:
        """SubjectPublicKeyInfo DER (compared with a certificate's)."""
        ...

    def private_key_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM: only for TLS stacks and the 0600 files."""
        ...

    def csr_der(self, uri: str) -> bytes:
        """A PKCS#10 CSR: empty subject, `uri` the only (critical) SAN."""
        ...


_ec_key: Any = native_core.member("EcKey")


def new_private_key() -> WorkloadKey:
    """ECDSA P-256: what Istio uses for workloads, fast to make and to handshake."""
    key: WorkloadKey = _ec_key.generate()
    return key


def load_private_key(pem: bytes) -> WorkloadKey:
    """A key from its PKCS#8 PEM; ValueError if it is not a P-256 key."""
    key: WorkloadKey = _ec_key.from_pkcs8_pem(pem.decode("ascii"))
    return key


def make_csr(key: WorkloadKey, identity: SpiffeId) -> str:
    """A PEM CSR whose only SAN is the SPIFFE URI; the subject is empty (the
    SVID convention: the identity lives in the SAN, nowhere else)."""
    return pem_encode("CERTIFICATE REQUEST", key.csr_der(identity.uri))
