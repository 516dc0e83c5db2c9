"""Inbound mTLS, server-agnostic: which mode a port is in, how a connection is
classified (TLS or plaintext) without consuming a byte, and what the app is
told about a verified peer (the ASGI `tls` extension).

PeerAuthentication modes (Istio's): STRICT accepts only mTLS, PERMISSIVE
accepts mTLS and plaintext on the same port, DISABLE only plaintext.
PERMISSIVE is decided per connection by peeking at the first byte: a TLS
record starts with 0x16 (handshake), an HTTP/1 request with a method name,
an HTTP/2 preface with "P". Peeking (MSG_PEEK) leaves the byte in the
socket, so the TLS layer or the HTTP parser then reads the stream whole.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxyless_mesh.model import TlsMode
from proxyless_mesh.security._credentials import Credentials
from proxyless_mesh.security._spiffe import peer_spiffe_id

__all__ = [
    "TLS_HANDSHAKE_BYTE",
    "InboundTls",
    "asgi_tls_extension",
    "plaintext_refusal",
]

#: The content type of a TLS handshake record: every ClientHello starts with it.
TLS_HANDSHAKE_BYTE = 0x16
SNIFF_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class InboundTls:
    """What a serving helper needs: the current credentials (read per
    connection, so rotation reaches new connections) and the mode of a local
    port (read per connection, so a PeerAuthentication change does too)."""

    credentials: Callable[[], Credentials]
    mode: Callable[[int], TlsMode]  # local port -> mode
    sniff_timeout: float = SNIFF_TIMEOUT
    handshake_timeout: float = HANDSHAKE_TIMEOUT

    def server_context(self, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        """mTLS is mutual in every mode: a TLS client must present a mesh
        certificate (Istio's PERMISSIVE too: TLS without one is refused)."""
        return self.credentials().server_ssl_context(alpn, require_client_cert=True)


def plaintext_refusal(first_byte: int) -> bytes:
    """What a STRICT port answers a plaintext client before closing: an HTTP/1
    client (first byte a letter) gets a 426 saying why, so the failure is
    readable at the caller; anything else gets nothing."""
    if not (65 <= first_byte <= 90):  # not an upper-case method name
        return b""
    body = (
        b"mutual TLS required: this port's PeerAuthentication is STRICT; "
        b"call it through the mesh with a workload certificate\n"
    )
    return (
        b"HTTP/1.1 426 Upgrade Required\r\nupgrade: TLS/1.3\r\nconnection: close\r\n"
        b"content-type: text/plain\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
    ) + body


_CIPHER_IDS: dict[str, int] = {}


def _cipher_id(name: str) -> int | None:
    """IANA cipher suite number of an OpenSSL cipher name (ASGI wants the
    number; Python's ssl only names it). OpenSSL's ids carry the IANA number
    in their low 16 bits."""
    if not _CIPHER_IDS:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.set_ciphers("ALL")
        for cipher in ctx.get_ciphers():
            _CIPHER_IDS[cipher["name"]] = int(cipher["id"]) & 0xFFFF
    return _CIPHER_IDS.get(name)


_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def asgi_tls_extension(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, server_pem: str
) -> dict[str, Any]:
    """`scope["extensions"]["tls"]` per the ASGI TLS extension, for a verified
    mTLS connection: `client_cert_chain` holds the peer's leaf as PEM (Python's
    ssl exposes only the leaf before 3.13), `client_cert_error` is None
    because the handshake verified it against the mesh roots. `spiffe_id` is
    ours, not the spec's: the identity already read off the certificate."""
    der = ssl_object.getpeercert(True)  # positional: httpcore hands out _ssl._SSLSocket
    chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
    cipher = ssl_object.cipher()
    return {
        "server_cert": server_pem,
        "client_cert_chain": chain,
        "client_cert_name": None,  # SVIDs carry the identity in the SAN, not the subject
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": _cipher_id(cipher[0]) if cipher else None,
        "spiffe_id": peer_spiffe_id(ssl_object),
    }
