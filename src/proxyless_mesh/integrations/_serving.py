"""Serving with mesh mTLS: uvicorn (ASGI) and grpcio helpers.

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
`serve_asgi` also follows the control plane: it binds first (so port 0
works), asks the mesh for each bound port's server listener
(`mesh.serve_inbound`), and wraps the app in the AuthorizationMiddleware fed
by `mesh.inbound_policies(port)`; the TLS mode per connection is then the
listener's PeerAuthentication. An operator's policy change reaches the next
request (policy) or the next connection (mode) without a restart. Once uvicorn
accepts connections it announces the (first) bound port as `port_name`
(default "http"; None: no announcement) with `mesh.announce_port`, which is
what a `Registration` without port numbers waits for (port 0 works).

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

grpcio: `grpc_server_credentials(mesh)` are rotating server credentials
(`grpc.dynamic_ssl_server_credentials`: grpcio asks the fetch function at
each new handshake, which returns a new certificate config only after a
rotation), client certificates required and verified against the mesh
roots; `add_mesh_port(server, address, mesh)` adds a port by mode. grpcio
cannot serve TLS and plaintext on one port, so PERMISSIVE is refused there.
`add_mesh_port` announces the bound port as `port_name` (default "grpc"):
grpcio listens from add_port on, so callers connecting before
`server.start()` wait in the backlog rather than fail; start the server
right after, or pass port_name=None and announce after start yourself.
The handler reads the peer with `grpc_peer_identity(context)` (grpc's auth
context carries the verified leaf as PEM).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
import uvicorn
from cryptography.hazmat.primitives.serialization import Encoding
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from proxyless_mesh.errors import MeshError
from proxyless_mesh.integrations._asgi import AuthorizationMiddleware
from proxyless_mesh.integrations._coalescing import CorkedTransport
from proxyless_mesh.integrations._grpc_server import auth_context_peer_principal
from proxyless_mesh.model import TlsMode
from proxyless_mesh.registration import check_port
from proxyless_mesh.security import (
    TLS_HANDSHAKE_BYTE,
    Credentials,
    InboundTls,
    asgi_tls_extension,
    plaintext_refusal,
)

if TYPE_CHECKING:
    from proxyless_mesh.mesh import Mesh

__all__ = [
    "MeshH11Protocol",
    "MeshHttpToolsProtocol",
    "MeshUvicornConfig",
    "add_mesh_port",
    "asgi_config",
    "authorized_asgi",
    "grpc_peer_identity",
    "grpc_server_credentials",
    "inbound_tls",
    "serve_asgi",
]

log = logging.getLogger("proxyless_mesh.serving")

ModeArg = TlsMode | str | None


def inbound_tls(mesh: Mesh, mode: ModeArg = None) -> InboundTls:
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
        return inbound.credentials().leaf.public_bytes(Encoding.PEM).decode("ascii")

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
    """uvicorn's httptools protocol with mesh mTLS (see module docstring)."""


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


def asgi_config(app: Any, mesh: Mesh, *, mode: ModeArg = None, **kwargs: Any) -> MeshUvicornConfig:
    """`uvicorn.Server(asgi_config(app, mesh, host=..., port=...)).run()`:
    serve `app` with mesh mTLS; `kwargs` are uvicorn.Config's."""
    return MeshUvicornConfig(app, inbound=inbound_tls(mesh, mode), **kwargs)


class _AnnouncingServer(uvicorn.Server):
    """uvicorn.Server that announces its port once it accepts connections
    (after `startup`), so the mesh never lists it before it can answer; a
    refused registration stops the server and is raised by `serve_asgi`.
    Told to stop, it leaves the registries first (`withdraw`: DRAINING, then
    the drain time) while still accepting, and only then closes its listeners,
    so no client is sent to a port that stopped answering."""

    def __init__(
        self,
        config: uvicorn.Config,
        announce: Callable[[], Any] | None,
        withdraw: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(config)
        self._announce = announce
        self._withdraw = withdraw
        self.announce_error: BaseException | None = None

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        if self._withdraw is not None and self.announce_error is None:
            try:
                await self._withdraw()
            except Exception:
                # The drain is a courtesy to clients; a failure (control plane
                # gone) must not keep the server from stopping.
                log.exception("leaving the registries before stopping failed")
        await super().shutdown(sockets=sockets)

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.started or self._announce is None:
            return
        try:
            await self._announce()
        except MeshError as exc:  # RegistrationError: stop serving, raise it after
            self.announce_error = exc
            self.should_exit = True


async def serve_asgi(
    app: Any,
    mesh: Mesh,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    mode: ModeArg = None,
    sockets: list[Any] | None = None,
    authorize: bool | None = None,
    port_name: str | None = "http",
    **kwargs: Any,
) -> None:
    """Serve until uvicorn is told to stop (signal, or the task cancelled).

    `authorize` (default: when the bootstrap names a server listener
    template, as meshctl's do): follow the control plane's inbound policy for
    each bound port, as the module docstring says; False serves `app` as is.
    `mode` fixes the PeerAuthentication mode instead of following xDS.
    `port_name`: the WorkloadGroup port name the first bound port is
    announced as once serving (None: not announced). Raises
    RegistrationError when the registration that waited for it is refused.
    When told to stop, it first withdraws the mesh's registrations
    (`mesh.withdraw_async`: DRAINING, then the drain time) while still
    serving, then closes its listeners."""
    if port_name is not None:
        check_port(port_name, 1)  # a bad name fails here, not inside uvicorn's startup
    config = asgi_config(app, mesh, mode=mode, host=host, port=port, **kwargs)
    if authorize is None:
        authorize = bool(mesh.bootstrap.server_listener_resource_name_template)
    if config.uds or config.fd is not None:  # no TCP port to follow or announce
        await uvicorn.Server(config).serve(sockets=sockets)
        return
    owned = sockets is None
    bound = sockets if sockets is not None else [config.bind_socket()]
    try:
        ports = []
        for sock in bound:
            address, local_port = sock.getsockname()[:2]
            if authorize:
                await mesh.serve_inbound_async(local_port, address)
            ports.append(local_port)
        if authorize:
            config.app = authorized_asgi(app, mesh, ports)
            config.loaded = False  # uvicorn wraps config.app when it loads
        announce = None
        if port_name is not None and ports:
            name, first = port_name, ports[0]

            async def announce() -> None:
                await mesh.announce_port_async(name, first)

        server = _AnnouncingServer(config, announce, mesh.withdraw_async)
        await server.serve(sockets=bound)
        if server.announce_error is not None:
            raise server.announce_error
    finally:
        if owned:
            for sock in bound:
                sock.close()


def authorized_asgi(app: Any, mesh: Mesh, ports: list[int]) -> Any:
    """`app` behind the AuthorizationMiddleware fed by the mesh's policy for
    each of `ports` (each already followed with `mesh.serve_inbound`); with
    several ports the request's local port (`scope["server"]`) picks it."""
    guarded = {p: AuthorizationMiddleware(app, policies=mesh.inbound_policies(p)) for p in ports}
    if len(guarded) == 1:
        return next(iter(guarded.values()))
    return _ByPort(app, guarded)


class _ByPort:
    """Dispatch to the middleware of the local port; a port without one (an
    HTTP scope without `server`) is refused rather than served unchecked."""

    def __init__(self, app: Any, guarded: dict[int, AuthorizationMiddleware]) -> None:
        self.app = app
        self.guarded = guarded

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        server = scope.get("server")
        middleware = self.guarded.get(server[1]) if server else None
        if middleware is None:
            raise MeshError(f"no inbound policy followed for local address {server}")
        await middleware(scope, receive, send)


# -- grpcio ------------------------------------------------------------------------


def _certificate_configuration(credentials: Credentials) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(credentials.private_key_pem(), credentials.chain_pem.encode())],
        root_certificates=credentials.roots_pem.encode(),
    )


def grpc_server_credentials(source: Mesh | Callable[[], Credentials]) -> grpc.ServerCredentials:
    """Rotating mTLS server credentials from a mesh (or a credentials source)."""
    current: Callable[[], Credentials] = source.credentials if not callable(source) else source
    served = [current()]

    def fetch() -> Any:
        # Called by grpcio on its own threads at each handshake: cheap unless
        # the credentials object changed (one identity comparison).
        now = current()
        if now is served[0]:
            return None
        served[0] = now
        return _certificate_configuration(now)

    return grpc.dynamic_ssl_server_credentials(
        _certificate_configuration(served[0]), fetch, require_client_authentication=True
    )


def add_mesh_port(
    server: Any,
    address: str,
    mesh: Mesh,
    *,
    mode: ModeArg = None,
    port_name: str | None = "grpc",
) -> int:
    """Add `address` to a grpc (or grpc.aio) server: mTLS (STRICT; the
    default with an identity) or plaintext (DISABLE; the default without).
    Returns the bound port, announced as `port_name` (None: not announced;
    see the module docstring: start the server right after)."""
    port = _add_port(server, address, mesh, mode)
    if port_name is not None and port:
        mesh.announce_port(port_name, port)
    return port


def _add_port(server: Any, address: str, mesh: Mesh, mode: ModeArg) -> int:
    fixed = TlsMode(mode) if mode is not None else None
    if fixed is None:
        fixed = TlsMode.STRICT if mesh.mtls else TlsMode.DISABLE
    if fixed is TlsMode.PERMISSIVE:
        raise MeshError(
            "grpcio cannot serve mTLS and plaintext on one port: serve STRICT (or DISABLE) "
            "here, or use grpc.server(xds=True), whose xDS credentials follow the control "
            "plane's PeerAuthentication"
        )
    if fixed is TlsMode.DISABLE:
        port: int = server.add_insecure_port(address)
        return port
    if not mesh.mtls:
        raise MeshError("STRICT needs a workload identity, and this mesh has none")
    port = server.add_secure_port(address, grpc_server_credentials(mesh))
    return port


def grpc_peer_identity(context: Any) -> str | None:
    """The verified SPIFFE ID of the caller of an RPC (None over plaintext)."""
    return auth_context_peer_principal(context)
