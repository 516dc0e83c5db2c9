"""The certificate-signing protocol shared by the library (client) and the control
plane's CA (server): Istio's `istio.v1.auth.IstioCertificateService`.

A package of its own, beside xds_client in the layer that may speak protobuf
(the wire codecs of the control plane's two gRPC services): security's CA
client uses it and so stays free of protobuf, and the control plane's CA
imports only this, not the xDS client.

The message types are built at import from a descriptor (no generated code), in
a private descriptor pool so they cannot clash with Istio's own generated
modules if an application imports those. Field numbers and types are Istio's
(`security/proto/pb/ca.proto`), so the bytes are wire-compatible:

    IstioCertificateRequest  { string csr = 1; int64 validity_duration = 3;
                               google.protobuf.Struct metadata = 4; }
    IstioCertificateResponse { repeated string cert_chain = 1;   // leaf first, root last
                               repeated string trust_bundle = 100; }  // our extension

`trust_bundle` (every root currently trusted, PEM) is our addition: it is how
workloads learn a new root before it signs anything. Istio's clients skip the
unknown field; ours fall back to the last cert of `cert_chain` without it.

The library's client encodes the request and decodes the response by hand
(`encode_request`, `decode_response`: no protobuf in a process that only
meshes HTTP, issue 25); the message classes, for the control plane's server
and the tests, are built on first use.

Authentication travels in call metadata (see `AUTHORIZATION`, `RENEWAL_CHAIN`,
`RENEWAL_PROOF`): a join token, or, for renewal, the current certificate chain
plus a signature by the current key over the new CSR (`renewal_payload`).
"""

from __future__ import annotations

import hashlib
from typing import Any

from proxyless_mesh.ca_wire._codec import decode_response, encode_request

__all__ = [
    "AUTHORIZATION",
    "CREATE_CERTIFICATE",
    "RENEWAL_CHAIN",
    "RENEWAL_PROOF",
    "SERVICE_NAME",
    "CertificateRequest",
    "CertificateResponse",
    "decode_response",
    "encode_request",
    "renewal_payload",
]

SERVICE_NAME = "istio.v1.auth.IstioCertificateService"
#: The full gRPC method path, as `channel.unary_unary` wants it.
CREATE_CERTIFICATE = f"/{SERVICE_NAME}/CreateCertificate"

#: "authorization: Bearer <join token>" (the header Istio's CA reads).
AUTHORIZATION = "authorization"
#: Renewal: the caller's current chain (PEM, leaf first), binary metadata.
RENEWAL_CHAIN = "x-mesh-cert-chain-bin"
#: Renewal: ECDSA signature (DER) by the current key over `renewal_payload(csr)`.
RENEWAL_PROOF = "x-mesh-renewal-proof-bin"

_PROOF_CONTEXT = b"proxyless-mesh certificate renewal v1\n"


def renewal_payload(csr_pem: str) -> bytes:
    """What the current key signs to prove the renewal: bound to this CSR, so a
    captured request is useless to anyone without the CSR's private key."""
    return _PROOF_CONTEXT + hashlib.sha256(csr_pem.encode()).digest()


def __getattr__(name: str) -> Any:
    """CertificateRequest / CertificateResponse: protobuf classes, built on first
    use so that importing this package does not import protobuf."""
    if name in ("CertificateRequest", "CertificateResponse"):
        from proxyless_mesh.ca_wire import _messages

        return getattr(_messages, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
