"""Serving with mesh mTLS: uvicorn's protocol classes and config.

uvicorn: `asgi_config(app, mesh, ...)` returns a `uvicorn.Config` whose HTTP
protocol class (`Config(http=...)`, uvicorn's extension point) does the
TLS itself, per connection, by the port's PeerAuthentication mode:
- it looks at the first byte the client sends: a TLS ClientHello (0x16)
  gets the mTLS handshake with the workload certificate current at that
  moment (`loop.start_tls`, fed the bytes already read), plaintext is
  served (PERMISSIVE) or answered 426 and closed (STRICT); DISABLE serves
  plaintext without looking.
- after the handshake the app sees the ASGI `tls` extension
  (`scope["extensions"]["tls"]`: `client_cert_chain`, `tls_version`,
  `cipher_suite`, ... and our `spiffe_id`), which the authorization
  middleware reads. uvicorn itself gets no ssl_* settings: do not pass any.
`serve_asgi` (`_serve_asgi`) serves with these and follows the control plane.

Limits: WebSocket upgrades are handed to uvicorn's ws protocol, which builds
its scope from the app itself, so a WebSocket scope has no `tls` extension
(the middleware then sees no principal: fail closed).

Event loop: `loop="auto"` by default, uvicorn's choice: uvloop when it is
importable (its C TLS layer costs less CPU per request than asyncio's
pure-Python sslproto), else asyncio; `loop=` overrides it. It applies where
uvicorn makes the loop (`uvicorn.Server(config).run()`); `serve_asgi` is a
coroutine and serves on the loop that runs it (`uvloop.run(serve_asgi(...))`
for uvloop). Both loops work: the first bytes are read, not peeked (uvloop
reads right after `connection_made` even when paused there), and the TLS
layer is `loop.start_tls`. uvloop's transports are not `asyncio.Transport`
subclasses, so transports are checked by what they can do (`_stream`).

grpcio: see `_grpc_serving` (add_mesh_port, rotating server credentials).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any, cast

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from proxyless_mesh.errors import MeshError
from proxyless_mesh.integrations._coalescing import CorkedTransport
from proxyless_mesh.integrations._grpc_serving import ModeArg
from proxyless_mesh.model import TlsMode
from proxyless_mesh.security import (
    TLS_HANDSHAKE_BYTE,
    InboundTls,
    asgi_tls_extension,
    plaintext_refusal,
)

if TYPE_CHECKING:
    from proxyless_mesh.runtime import InboundRuntime

__all__ = [
    "MeshH11Protocol",
    "MeshHttpToolsProtocol",
    "MeshUvicornConfig",
    "asgi_config",
    "inbound_tls",
]

log = logging.getLogger("proxyless_mesh.serving")


def inbound_tls(mesh: InboundRuntime, mode: ModeArg = None) -> InboundTls:
    """The inbound mTLS settings of `mesh`: an explicit `mode` (TlsMode or its
    name), else per port what the mesh says (`mesh.inbound_tls_mode`)."""
    fixed = TlsMode(mode) if mode is not None else None
    if fixed is not None and fixed is not TlsMode.DISABLE and not mesh.mtls:
        raise MeshError(
            f"PeerAuthentication {fixed.value} needs a workload identity, and this mesh has "
            "none: put the CA address and a join token in the bootstrap"
        )

    def mode_of(port: int) -> TlsMode:
        return fixed if fixed is not None else mesh.inbound_tls_mode(port)

    return InboundTls(credentials=mesh.credentials, mode=mode_of)


# -- uvicorn -----------------------------------------------------------------------


def _stream(transport: asyncio.BaseTransport) -> asyncio.Transport | None:
    """`transport` as a readable and writable stream transport, or None (a
    datagram or pipe one). By its methods, not its class: uvloop's TCP
    transport has them all but derives from none of asyncio's classes."""
    for method in ("pause_reading", "resume_reading", "set_protocol", "write", "abort"):
        if not callable(getattr(transport, method, None)):
            return None
    return cast(asyncio.Transport, transport)


class _WithTls:
    """The app of one mTLS connection: every HTTP scope gets the extension."""

    __slots__ = ("app", "tls")

    def __init__(self, app: Any, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            extensions = scope.get("extensions")
            if extensions is None:
                scope["extensions"] = extensions = {}
            extensions["tls"] = self.tls
        await self.app(scope, receive, send)


class _Held(asyncio.Protocol):
    """Holds what the TLS layer delivers between the end of the handshake and
    the hand-over to the HTTP protocol (asyncio may read right away)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.eof = False
        self.lost: tuple[Exception | None] | None = None

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = (exc,)

    def replay(self, protocol: asyncio.Protocol) -> None:
        for chunk in self.chunks:
            protocol.data_received(chunk)
        if self.eof:
            protocol.eof_received()
        if self.lost is not None:
            protocol.connection_lost(self.lost[0])


class _Refuser(asyncio.Protocol):
    """STRICT, plaintext client: read the request head, answer, close (closing
    with unread bytes would reset the connection before the answer is read)."""

    def __init__(self, transport: asyncio.BaseTransport, answer: bytes) -> None:
        self._transport = transport
        self._answer = answer
        self._head = b""

    def data_received(self, data: bytes) -> None:
        self._head += data
        if b"\r\n\r\n" in self._head or len(self._head) > 65536:
            transport = _stream(self._transport)
            if transport is not None:
                transport.write(self._answer)
            self._transport.close()


def _no_delay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle off on an accepted TCP connection. asyncio does it only for
    sockets whose protocol field says TCP, and uvicorn's `bind_socket()` (like
    any `socket.socket()`) leaves it 0: the TLS layer's second write of a
    response then waited for the client's delayed ACK, ~40 ms per mTLS
    request. Plaintext answers go out in one write and never showed it."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # the peer already went away: nothing to speed up
        return


class _MeshProtocolMixin:
    """Classify by the first bytes, handshake and verify, then hand the
    transport to uvicorn's protocol (the class this is mixed into).

    The first chunk is read, not peeked: uvloop starts reading right after
    `connection_made` whatever it asked (a pause there does not hold), so the
    bytes would reach this protocol anyway. Plaintext gets the chunk replayed
    to uvicorn; a ClientHello is fed to the TLS layer `start_tls` installs
    (`_feed`), before any later byte, as if the loop had read it there."""

    config: Any  # a MeshUvicornConfig (uvicorn types it as Config)
    loop: asyncio.AbstractEventLoop
    app: Any
    _sniff: asyncio.TimerHandle | None  # closes a connection that sends nothing
    _raw: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handed_over = False
        self._sniff = None
        _no_delay(transport)
        inbound = self.config.mesh_inbound
        sockname = transport.get_extra_info("sockname")
        port = sockname[1] if isinstance(sockname, tuple) else 0
        self._mode = mode = inbound.mode(port)
        if mode is TlsMode.DISABLE:
            self._hand_over(transport, None)
            return
        stream = _stream(transport)
        if stream is None:
            transport.close()
            return
        self._raw = stream
        self._sniff = self.loop.call_later(inbound.sniff_timeout, stream.close)

    def data_received(self, data: bytes) -> None:
        if self._handed_over:
            super().data_received(data)  # type: ignore[misc]
            return
        if self._sniff is not None:
            self._sniff.cancel()
        transport = self._raw
        transport.pause_reading()
        if data[0] != TLS_HANDSHAKE_BYTE:
            if self._mode is TlsMode.STRICT:
                peer = transport.get_extra_info("peername")
                log.info("refused a plaintext connection from %s: PeerAuthentication STRICT", peer)
                self._refuse(transport, plaintext_refusal(data[0]), data)
                return
            self._hand_over(transport, None)
            super().data_received(data)  # type: ignore[misc]
            transport.resume_reading()
            return
        self._setup = self.loop.create_task(self._handshake(transport, self.config.mesh_inbound))
        # After the task's first step (start_tls installs its protocol and
        # schedules the handshake and resume_reading), before those run.
        self.loop.call_soon(self._feed, transport, data)

    def eof_received(self) -> None:
        if self._handed_over:  # else closed before a byte: the transport closes itself
            super().eof_received()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handed_over:
            super().connection_lost(exc)  # type: ignore[misc]
        elif self._sniff is not None:  # before the first byte
            self._sniff.cancel()

    def _hand_over(self, transport: asyncio.BaseTransport, tls: dict[str, Any] | None) -> None:
        if tls is not None:
            self.app = _WithTls(self.app, tls)
        self._handed_over = True
        # uvicorn writes a response's head and body separately: one write
        # (one TLS record, one send) per loop turn instead (_coalescing.py).
        corked = CorkedTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(corked)  # type: ignore[misc]

    @staticmethod
    def _feed(transport: asyncio.Transport, data: bytes) -> None:
        """Give the TLS layer the ClientHello already read (asyncio's and
        uvloop's TLS protocols are buffered protocols: get_buffer and
        buffer_updated are how a loop hands them bytes)."""
        protocol: Any = transport.get_protocol()
        get_buffer = getattr(protocol, "get_buffer", None)  # uvloop's: not a subclass
        if transport.is_closing() or get_buffer is None:  # start_tls failed at once
            transport.abort()
            return
        view = memoryview(data)
        while view:
            buffer = get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]

    async def _handshake(self, transport: asyncio.Transport, inbound: InboundTls) -> None:
        peer = transport.get_extra_info("peername")
        held = _Held()
        try:
            tls_transport = await self.loop.start_tls(
                transport,
                held,
                inbound.server_context(),
                server_side=True,
                ssl_handshake_timeout=inbound.handshake_timeout,
            )
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            log.info("refused a TLS connection from %s: %s", peer, exc)
            transport.close()
            return
        if tls_transport is None:  # closed during the handshake
            return
        ssl_object = tls_transport.get_extra_info("ssl_object")
        tls = asgi_tls_extension(ssl_object, self._server_pem(inbound))
        if tls["spiffe_id"] is None:
            log.info("refused a TLS connection from %s: no SPIFFE ID in its certificate", peer)
            tls_transport.abort()
            return
        self._hand_over(tls_transport, tls)
        tls_transport.set_protocol(self)  # type: ignore[arg-type]
        held.replay(self)  # type: ignore[arg-type]

    @staticmethod
    def _server_pem(inbound: InboundTls) -> str:
        return inbound.credentials().leaf.pem

    def _refuse(self, transport: asyncio.Transport, answer: bytes, head: bytes) -> None:
        if not answer:
            transport.close()
            return
        refuser = _Refuser(transport, answer)
        transport.set_protocol(refuser)
        self.loop.call_later(self.config.mesh_inbound.sniff_timeout, transport.close)
        refuser.data_received(head)
        transport.resume_reading()


class MeshH11Protocol(_MeshProtocolMixin, H11Protocol):
    """uvicorn's h11 protocol with mesh mTLS (see module docstring)."""


class MeshHttpToolsProtocol(_MeshProtocolMixin, HttpToolsProtocol):
    """uvicorn's httptools protocol with mesh mTLS (see module docstring).

    httptools drops an absolute-form target's authority (`GET http://h/x`):
    `raw_path` is set to the target as received, as h11 leaves it, so the
    authorization middleware's hygiene step uses that authority as the Host."""

    url: bytes
    scope: Any
    root_path: str

    def on_headers_complete(self) -> None:
        target = self.url
        if target.startswith(b"/"):
            super().on_headers_complete()
            return
        # uvicorn would parse it (and fail on `http://h` without a path): give
        # it "/" and then the target as received; the app task runs later.
        self.url = b"/"
        try:
            super().on_headers_complete()
        finally:
            self.url = target
        if "raw_path" in self.scope:  # not a WebSocket upgrade
            raw, _, query = target.partition(b"?")
            self.scope["raw_path"] = self.root_path.encode() + raw
            self.scope["query_string"] = query


_PROTOCOLS: dict[str, type[asyncio.Protocol]] = {
    "h11": MeshH11Protocol,
    "httptools": MeshHttpToolsProtocol,
}


class MeshUvicornConfig(uvicorn.Config):
    """A uvicorn.Config serving through the mesh protocol classes; `inbound`
    says which credentials and which mode (see `inbound_tls`)."""

    def __init__(self, app: Any, *, inbound: InboundTls, http: str = "h11", **kwargs: Any) -> None:
        for key in ("ssl_keyfile", "ssl_certfile", "ssl_ca_certs"):
            if kwargs.get(key):
                raise MeshError(f"{key}: the mesh does the TLS (its workload certificate)")
        if http not in _PROTOCOLS:
            raise MeshError(f"http must be one of {sorted(_PROTOCOLS)}, not {http!r}")
        kwargs.setdefault("loop", "auto")  # uvloop if importable (module docstring)
        super().__init__(app, http=_PROTOCOLS[http], **kwargs)
        self.mesh_inbound = inbound


def asgi_config(
    app: Any, mesh: InboundRuntime, *, mode: ModeArg = None, **kwargs: Any
) -> MeshUvicornConfig:
    """`uvicorn.Server(asgi_config(app, mesh, host=..., port=...)).run()`:
    serve `app` with mesh mTLS; `kwargs` are uvicorn.Config's."""
    return MeshUvicornConfig(app, inbound=inbound_tls(mesh, mode), **kwargs)
