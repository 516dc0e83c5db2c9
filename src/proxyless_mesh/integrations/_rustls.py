"""Mesh mTLS in Rust for the sync httpx transports (rustls, in the native core).

The mTLS transports (`_tls_transport.py`) take the TCP connection from
httpcore's own sync backend as before; at httpcore's `start_tls` this module
hands the connected socket to `proxyless_mesh_native.TlsStream`, which makes
the handshake with the credentials' `client_tls_config` and is then the
stream httpcore reads and writes: the TLS records, the socket calls, the
timeouts and the HTTP/1.1 head-holding of `_coalescing.py` all run in Rust
with the GIL released. The server's SPIFFE ID is checked on
`getpeercert(True)` by the same `verify_peer` as on the ssl path.

Failures are httpcore's own exceptions, as from its ssl stream: ConnectError
/ ConnectTimeout during the handshake (a chain from another root, a refused
client certificate), ReadError / ReadTimeout, WriteError / WriteTimeout.

`PROXYLESS_MESH_TLS=openssl` selects Python's ssl instead (an A/B, or to
rule rustls out); the asyncio transports always use Python's ssl, and so
does TLS origination (its trust store is the system's or the rule's).
"""

from __future__ import annotations

import os
from typing import Any

import httpcore

from proxyless_mesh import native_core

__all__ = ["ENV", "rustls_selected", "start_rustls"]

ENV = "PROXYLESS_MESH_TLS"

_ERRORS = (
    httpcore.ConnectError,
    httpcore.ConnectTimeout,
    httpcore.ReadError,
    httpcore.ReadTimeout,
    httpcore.WriteError,
    httpcore.WriteTimeout,
)


def rustls_selected() -> bool:
    """Whether new sync mesh mTLS transports use rustls (read at construction)."""
    return os.environ.get(ENV, "rustls").lower() != "openssl"


def start_rustls(
    tcp: httpcore.NetworkStream, config: Any, server_hostname: str | None, timeout: float | None
) -> Any:
    """httpcore's start_tls on a connected sync stream, in rustls. The socket
    is closed if the handshake fails, as httpcore's stream does."""
    sock = tcp.get_extra_info("socket")
    try:
        return native_core.module().TlsStream.connect(
            sock, config, server_hostname or "", timeout, _ERRORS
        )
    except BaseException:
        sock.close()
        raise
