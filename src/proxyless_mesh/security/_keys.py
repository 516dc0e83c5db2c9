"""Workload keys and CSRs. The private key is made here and never serialised
except into this process's own TLS stack, the 0600 files grpcio reads, and the
0600 certificate cache for a restart (see _cert_cache.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxyless_mesh.security._spiffe import SpiffeId

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["make_csr", "new_private_key", "private_key_pem"]


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """ECDSA P-256: what Istio uses for workloads, fast to make and to handshake.
    cryptography loads here, not at import: a mesh without a CA never needs it."""
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, identity: SpiffeId) -> str:
    """A PEM CSR whose only SAN is the SPIFFE URI; the subject is empty (the
    SVID convention: the identity lives in the SAN, nowhere else)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, for the TLS stack and the file_watcher key file only."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
