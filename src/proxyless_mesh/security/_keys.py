"""Workload keys and CSRs. The private key is made here and never serialised
except into this process's own TLS stack, the 0600 files grpcio reads, and the
0600 certificate cache for a restart (see _cert_cache.py).

With the native core the key lives in Rust (`proxyless_mesh_native.EcKey`:
P-256 from the OS's random source, ECDSA-SHA256, a hand-encoded PKCS#10 CSR);
without it, `CryptographyKey` does the same with the `cryptography` package.
Both answer the `WorkloadKey` protocol, and tests/property/
test_native_identity_props.py demands their CSRs agree byte for byte below
the signature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from proxyless_mesh.security._certificates import native_core, pem_encode
from proxyless_mesh.security._spiffe import SpiffeId

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "CryptographyKey",
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


class CryptographyKey:
    """`WorkloadKey` on the `cryptography` package (no native core)."""

    __slots__ = ("_key",)

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "CryptographyKey(<P-256>)"

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def public_key_der(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def private_key_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def csr_der(self, uri: str) -> bytes:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization

        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        return csr.public_bytes(serialization.Encoding.DER)


def _native_key_class() -> Any:
    core = native_core()
    return None if core is None else core.EcKey


_native_key = _native_key_class()


def new_private_key() -> WorkloadKey:
    """ECDSA P-256: what Istio uses for workloads, fast to make and to handshake.
    Without the native core, cryptography loads here, not at import."""
    if _native_key is not None:
        key: WorkloadKey = _native_key.generate()
        return key
    from cryptography.hazmat.primitives.asymmetric import ec

    return CryptographyKey(ec.generate_private_key(ec.SECP256R1()))


def load_private_key(pem: bytes) -> WorkloadKey:
    """A key from its PKCS#8 PEM; ValueError if it is not a P-256 key."""
    if _native_key is not None:
        key: WorkloadKey = _native_key.from_pkcs8_pem(pem.decode("ascii"))
        return key
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    loaded = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != "secp256r1":
        raise ValueError("the key is not a P-256 key")
    return CryptographyKey(loaded)


def make_csr(key: WorkloadKey, identity: SpiffeId) -> str:
    """A PEM CSR whose only SAN is the SPIFFE URI; the subject is empty (the
    SVID convention: the identity lives in the SAN, nowhere else)."""
    return pem_encode("CERTIFICATE REQUEST", key.csr_der(identity.uri))
