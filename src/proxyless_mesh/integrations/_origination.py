"""TLS origination (DestinationRule `tls` SIMPLE / MUTUAL) for the httpx transports.

The application sends plain http://host/...; the mesh opens TLS to the
server as Envoy does for Istio's egress origination: the CA file of the rule
(else the system's roots), the client certificate for MUTUAL, SNI from the
rule (else the host), and the server's certificate must name one of the
rule's `subjectAltNames` (else the SNI name). Python's hostname check is off
because the connection goes to an endpoint address while the name to check
is the SNI's; the names are checked after the handshake, before any request
byte is written, exactly where mesh mTLS checks SPIFFE IDs.
"""

from __future__ import annotations

import ssl
from typing import Any

from proxyless_mesh.errors import PeerIdentityError, UpstreamConnectionError
from proxyless_mesh.model import OriginationTls

__all__ = ["origination_context", "verify_names"]


def origination_context(tls: OriginationTls, alpn: tuple[str, ...]) -> ssl.SSLContext:
    """The client context of one origination rule, built once per transport.

    Raises UpstreamConnectionError when a file cannot be used: the request
    fails as a connection to that upstream would (Envoy: the cluster's TLS
    context fails to load)."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file or None)
        if tls.cert_file and tls.key_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise UpstreamConnectionError(f"cannot use the TLS origination files: {exc}") from exc
    context.check_hostname = False  # checked by verify_names against the rule's names
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(list(alpn))
    return context


def verify_names(ssl_object: Any, names: frozenset[str], peer: str) -> None:
    """Raise PeerIdentityError unless the server's certificate has a DNS or URI
    SAN among `names` (a `*.suffix` DNS SAN covers one label)."""
    cert = ssl_object.getpeercert() or {}
    sans = [value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "URI")]
    if any(_covers(san, name) for san in sans for name in names):
        return
    raise PeerIdentityError(names, ", ".join(sans) or None, peer=peer)


def _covers(san: str, name: str) -> bool:
    if san.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest.lower() == san[2:].lower()
    return san.lower() == name.lower()
