"""SPIFFE IDs: the workload names mTLS authenticates, and how to read them off a peer.

An X.509 SVID carries exactly one `spiffe://` URI in its subjectAltName.
Python's `ssl` verifies the chain but cannot match URI SANs, so the check of
*who* the peer is happens here, after the handshake, on the DER certificate.
"""

from __future__ import annotations

import ssl
from collections.abc import Collection
from dataclasses import dataclass

from proxyless_mesh.errors import PeerIdentityError
from proxyless_mesh.security._certificates import Certificate

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "SpiffeId",
    "peer_spiffe_id",
    "verify_peer",
]

DEFAULT_TRUST_DOMAIN = "cluster.local"

_SCHEME = "spiffe://"


@dataclass(frozen=True, order=True)
class SpiffeId:
    """An Istio-shaped workload identity: spiffe://<trust domain>/ns/<ns>/sa/<sa>."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        for name in ("trust_domain", "namespace", "service_account"):
            value = getattr(self, name)
            if not value or "/" in value or any(c.isspace() for c in value):
                raise ValueError(f"SPIFFE {name} must be a non-empty name without '/', {value!r}")

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def uri(self) -> str:
        return str(self)

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse the Istio form; ValueError for anything else (other paths included),
        because only that form says which namespace and service account it grants."""
        if not uri.startswith(_SCHEME):
            raise ValueError(f"not a SPIFFE ID (no spiffe:// scheme): {uri!r}")
        parts = uri[len(_SCHEME) :].split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise ValueError(f"not of the form spiffe://<td>/ns/<ns>/sa/<sa>: {uri!r}")
        return cls(parts[0], parts[2], parts[4])


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The SPIFFE ID in the certificate the peer presented, or None if it
    presented none (or one without a SPIFFE ID).

    Only meaningful once the handshake verified the chain against the mesh
    roots (the contexts of `Credentials` require that); this function reads,
    it does not verify.
    """
    der = ssl_object.getpeercert(True)  # positional: httpcore hands out _ssl._SSLSocket
    if not der:
        return None
    return Certificate.from_der(der).spiffe_id


def verify_peer(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, expected: Collection[str], *, peer: str = ""
) -> str:
    """Return the peer's SPIFFE ID if it is one of `expected`, else raise
    PeerIdentityError naming both. An empty `expected` accepts any SPIFFE ID
    (the chain was already verified against the mesh roots), as Envoy does
    when a cluster lists no subject alt names; a peer without one is refused."""
    actual = peer_spiffe_id(ssl_object)
    if actual is None or (expected and actual not in expected):
        raise PeerIdentityError(expected, actual, peer=peer)
    return actual
