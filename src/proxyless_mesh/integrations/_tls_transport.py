"""Inner httpx transports that speak mesh mTLS to one destination's endpoints.

The mesh transports (`MeshTransport` / `AsyncMeshTransport`) route a request
to an endpoint; when the chosen cluster carries upstream TLS (Istio's
ISTIO_MUTUAL), they hand it to a transport from here instead of the plain
inner one:

- `TlsTransports.for_cluster(tls)` / `AsyncTlsTransports.for_cluster(tls)`
  return the transport for one expected-identity set (None when the cluster
  has no TLS or this mesh has no identity), one connection pool per set, so
  a pool never holds a connection verified against another set.
- Each connection's TLS handshake uses the workload certificate current at
  that moment (`credentials()`), verifies the server's chain against the mesh
  roots (hostname checking off: mesh peers are named by SPIFFE ID), then
  checks the server's SPIFFE ID against the expected ones *before* httpcore
  writes a request byte: the check wraps the network stream's `start_tls`.
  A mismatch closes the connection and raises `PeerIdentityError` naming
  both identities. An HTTP/1.1 connection then sends each request's head
  and body as one TLS record (`_coalescing.py`).
- The sync HTTP/1.1 transports speak that TLS in Rust (rustls,
  `_rustls.py`) unless PROXYLESS_MESH_TLS=openssl; the asyncio ones, HTTP/2
  and TLS origination use Python's ssl.
- Rotation needs no hook: new connections read the new credentials; open
  connections keep the handshake they made (as Envoy's do), so requests in
  flight are never cut.
- The httpcore pools count idle connections right and plan in linear time
  (`_pool.py`; the README says why and which httpcore internals that takes).

The request keeps its `http://` URL on the way in (the mesh picks
endpoints by address); the transport sends it as `https://` to the same
address and port and puts the URL back afterwards.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import httpcore
import httpx

from proxyless_mesh.errors import PeerIdentityError
from proxyless_mesh.integrations._coalescing import (
    AsyncHeadHoldingStream,
    HeadHoldingStream,
    hold_heads,
)
from proxyless_mesh.integrations._origination import origination_context, verify_names
from proxyless_mesh.integrations._pool import (
    LinearAsyncConnectionPool,
    LinearConnectionPool,
    supported,
)
from proxyless_mesh.integrations._rustls import rustls_selected, start_rustls
from proxyless_mesh.model import OriginationTls, UpstreamTls
from proxyless_mesh.security import Credentials, verify_peer

__all__ = [
    "AsyncMtlsTransport",
    "AsyncTlsTransports",
    "CredentialsSource",
    "MtlsTransport",
    "TlsTransports",
]

CredentialsSource = Callable[[], Credentials]

DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
# Pools that count idle connections right and plan in linear time where this
# httpcore allows (see _pool.py). Idle connections stay capped at 20: httpcore
# polls every connection's socket on each request start and end, so a pool
# of 100 idle ones costs the loop more than the handshakes it would save.
_SyncPool: type[httpcore.ConnectionPool] = (
    LinearConnectionPool if supported() else httpcore.ConnectionPool
)
_AsyncPool: type[httpcore.AsyncConnectionPool] = (
    LinearAsyncConnectionPool if supported() else httpcore.AsyncConnectionPool
)
_HTTP1 = ("http/1.1",)
_HTTP2 = ("h2", "http/1.1")


def _alpn(http2: bool) -> tuple[str, ...]:
    return _HTTP2 if http2 else _HTTP1


def _scratch_context() -> ssl.SSLContext:
    """What the httpcore pool is given as its ssl_context. httpcore sets ALPN
    on the context it holds before each handshake, so it must not be a shared
    Credentials context; our stream ignores it and uses the current workload
    context instead."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _fast_url_ok() -> bool:
    """httpx.URL keeps its parts in a NamedTuple; replacing scheme and port
    there costs ~1 us where URL.copy_with() re-parses the URL (~20-40 us, once
    per mTLS request). Use it only when this httpx has that shape."""
    try:
        ref = httpx.URL("http://a:1/p?q")._uri_reference
        return hasattr(ref, "_replace") and ref.scheme == "http" and ref.port == 1
    except AttributeError:
        return False


_FAST_URL = _fast_url_ok()


def _to_https(request: httpx.Request) -> httpx.URL:
    """Point the request at https on the same address and explicit port;
    returns the original URL to restore."""
    url = request.url
    if url.scheme == "http":
        if _FAST_URL:
            ref: Any = url._uri_reference
            https = httpx.URL.__new__(httpx.URL)
            https._uri_reference = ref._replace(scheme="https", port=ref.port or 80)
            request.url = https
        else:
            request.url = url.copy_with(scheme="https", port=url.port or 80)
    return url


# -- the identity check, inside the handshake step -----------------------------


class _Verifier:
    """What every stream of one pool checks: the expected SPIFFE IDs, and
    where the current workload credentials come from; for TLS origination
    (_origination.py), the rule's context and names instead."""

    def __init__(
        self,
        credentials: CredentialsSource | None,
        expected: frozenset[str],
        http2: bool,
        origination: tuple[OriginationTls, str] | None = None,
    ):
        self.credentials = credentials
        self.expected = expected
        self.alpn = _alpn(http2)
        self._fixed: ssl.SSLContext | None = None
        self.native = False  # rustls (sync mesh mTLS only): set by the transport
        if origination is not None:
            tls, sni = origination
            self._fixed = origination_context(tls, self.alpn)
            self.expected = frozenset(tls.subject_alt_names or ((sni,) if sni else ()))

    def context(self) -> ssl.SSLContext:
        if self._fixed is not None:
            return self._fixed
        assert self.credentials is not None  # mesh mTLS transports are made with credentials
        return self.credentials().client_ssl_context(self.alpn)

    def native_config(self) -> Any:
        assert self.credentials is not None
        return self.credentials().client_tls_config(self.alpn)

    def check(self, stream: Any, peer: str) -> None:
        ssl_object = stream.get_extra_info("ssl_object")
        if ssl_object is None:  # cannot happen after start_tls; refuse rather than trust
            raise PeerIdentityError(self.expected, None, peer=peer)
        if self._fixed is not None:
            verify_names(ssl_object, self.expected, peer=peer)
        else:
            verify_peer(ssl_object, self.expected, peer=peer)


class _MtlsStream(HeadHoldingStream):
    """The TCP stream before the handshake: `start_tls` makes it with the
    current workload credentials and checks the server's SPIFFE ID. Reads and
    writes pass through (none happen before the handshake)."""

    def __init__(self, stream: httpcore.NetworkStream, verifier: _Verifier, peer: str) -> None:
        super().__init__(stream)
        self._verifier = verifier
        self._peer = peer

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        """httpcore's start_tls with the mesh's credentials: in rustls (which
        holds heads itself) or in Python's ssl."""
        verifier = self._verifier
        native = verifier.native
        if native:
            tls = start_rustls(self._stream, verifier.native_config(), server_hostname, timeout)
        else:
            tls = self._stream.start_tls(verifier.context(), server_hostname, timeout)
        try:
            verifier.check(tls, self._peer)
        except PeerIdentityError:
            tls.close()
            raise
        if native:
            stream: httpcore.NetworkStream = tls
            return stream
        return HeadHoldingStream(tls) if hold_heads(tls) else tls


class _BackendSetup:
    """Both backends wrap httpcore's own (sync or asyncio) with one verifier."""

    _inner_class: type[Any]

    def __init__(self, verifier: _Verifier) -> None:
        self._inner = self._inner_class()
        self._verifier = verifier


class _MtlsBackend(_BackendSetup, httpcore.NetworkBackend):
    _inner: httpcore.SyncBackend
    _inner_class = httpcore.SyncBackend

    def connect_tcp(
        self, host: str, port: int, *args: Any, **kwargs: Any
    ) -> httpcore.NetworkStream:
        """httpcore's connect_tcp; timeout, local_address and socket_options pass on."""
        stream = self._inner.connect_tcp(host, port, *args, **kwargs)
        return _MtlsStream(stream, self._verifier, f"{host}:{port}")

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, timeout, socket_options)
        return _MtlsStream(stream, self._verifier, path)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncMtlsStream(AsyncHeadHoldingStream):
    """The asyncio twin of _MtlsStream."""

    def __init__(self, stream: httpcore.AsyncNetworkStream, verifier: _Verifier, peer: str) -> None:
        super().__init__(stream)
        self._verifier = verifier
        self._peer = peer

    async def start_tls(
        self, ssl_context: ssl.SSLContext, *args: Any, **kwargs: Any
    ) -> httpcore.AsyncNetworkStream:
        tls = await self._stream.start_tls(self._verifier.context(), *args, **kwargs)
        try:
            self._verifier.check(tls, self._peer)
        except PeerIdentityError:
            await tls.aclose()
            raise
        return AsyncHeadHoldingStream(tls) if hold_heads(tls) else tls


class _AsyncMtlsBackend(_BackendSetup, httpcore.AsyncNetworkBackend):
    _inner: httpcore.AnyIOBackend
    _inner_class = httpcore.AnyIOBackend

    async def connect_tcp(
        self, host: str, port: int, *args: Any, **kwargs: Any
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, *args, **kwargs)
        return _AsyncMtlsStream(stream, self._verifier, f"{host}:{port}")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(path, timeout, socket_options)
        return _AsyncMtlsStream(stream, self._verifier, path)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# -- the transports ---------------------------------------------------------------


def _swap_pool(transport: Any, pool: Any) -> None:
    """httpx's transports take no network backend, but keep their httpcore pool
    in `_pool` and only map its exceptions and wrap its responses: replace
    the pool, keep that mapping. Checked here so an httpx that changes this
    fails at construction, not on a request."""
    asynchronous = isinstance(pool, httpcore.AsyncConnectionPool)
    stock = httpcore.AsyncConnectionPool if asynchronous else httpcore.ConnectionPool
    if not isinstance(getattr(transport, "_pool", None), stock):
        raise RuntimeError(
            f"httpx {httpx.__version__} keeps no httpcore pool in {type(transport).__name__}."
            "_pool: this proxyless-mesh version cannot add mTLS to it"
        )
    transport._pool = pool


class _MtlsSetup:
    """The construction both transports share: keep the expected IDs and SNI,
    and give an httpx transport a pool whose connections speak mesh mTLS.
    Subclasses name the sync or asyncio parts; requests never pass here."""

    _http_class: type[Any]
    _pool_class: type[Any]
    _backend_class: type[Any]
    _native_tls = False

    def __init__(
        self,
        credentials: CredentialsSource | None,
        expected: Iterable[str] = (),
        *,
        sni: str = "",
        http2: bool = False,
        limits: httpx.Limits = DEFAULT_LIMITS,
        origination: OriginationTls | None = None,
    ) -> None:
        self.expected = frozenset(expected)
        self.sni = sni
        self._transport = self._http_class(http2=http2, limits=limits)
        tls = (origination, sni) if origination is not None else None
        verifier = _Verifier(credentials, self.expected, http2, tls)
        # HTTP/1.1 only: an HTTP/2 connection is read and written from
        # several threads at once, which the native stream allows but no test
        # drives yet.
        verifier.native = self._native_tls and tls is None and not http2 and rustls_selected()
        pool = self._pool_class(
            ssl_context=_scratch_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=http2,
            network_backend=self._backend_class(verifier),
        )
        _swap_pool(self._transport, pool)


class MtlsTransport(_MtlsSetup, httpx.BaseTransport):
    """Sync httpx transport: mesh mTLS to any endpoint, accepting only servers
    whose SPIFFE ID is in `expected` (empty: any the mesh roots vouch for)."""

    _transport: httpx.HTTPTransport
    _http_class = httpx.HTTPTransport
    _pool_class = _SyncPool
    _backend_class = _MtlsBackend
    _native_tls = True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = _to_https(request)
        if self.sni:
            request.extensions["sni_hostname"] = self.sni
        try:
            return self._transport.handle_request(request)
        except PeerIdentityError as exc:
            exc.request = request
            raise
        finally:
            request.url = url

    def close(self) -> None:
        self._transport.close()


class AsyncMtlsTransport(_MtlsSetup, httpx.AsyncBaseTransport):
    """The asyncio twin of MtlsTransport."""

    _transport: httpx.AsyncHTTPTransport
    _http_class = httpx.AsyncHTTPTransport
    _pool_class = _AsyncPool
    _backend_class = _AsyncMtlsBackend

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = _to_https(request)
        if self.sni:
            request.extensions["sni_hostname"] = self.sni
        try:
            return await self._transport.handle_async_request(request)
        except PeerIdentityError as exc:
            exc.request = request
            raise
        finally:
            request.url = url

    async def aclose(self) -> None:
        await self._transport.aclose()


class _Registry:
    """Transports by (expected IDs, SNI), created on first use; lookups are
    lock-free dict reads, creation takes a lock."""

    def __init__(self, credentials: CredentialsSource | None, factory: Callable[..., Any]):
        self._credentials = credentials
        self._factory = factory
        self._transports: dict[UpstreamTls, Any] = {}
        self._lock = threading.Lock()
        # The last (UpstreamTls, transport) looked up: a cluster's TLS object
        # stays the same until its CDS changes, so most lookups end here.
        self._last: tuple[UpstreamTls | None, Any] = (None, None)

    def get(self, tls: UpstreamTls | None) -> Any:
        # Origination needs no mesh identity; mesh mTLS does.
        if tls is None or (self._credentials is None and tls.origination is None):
            return None
        last_tls, last = self._last
        if last_tls is tls:
            return last
        key = replace(tls, expected_spiffe_ids=tuple(sorted(set(tls.expected_spiffe_ids))))
        transport = self._transports.get(key)
        if transport is None:
            with self._lock:
                transport = self._transports.get(key)
                if transport is None:
                    transport = self._factory(
                        self._credentials,
                        frozenset(key.expected_spiffe_ids),
                        sni=key.sni,
                        origination=key.origination,
                    )
                    self._transports[key] = transport
        self._last = (tls, transport)
        return transport

    def drain(self) -> list[Any]:
        with self._lock:
            transports, self._transports = list(self._transports.values()), {}
            self._last = (None, None)
        return transports


def mesh_credentials(mesh: Any) -> CredentialsSource | None:
    """The credentials source of a mesh with mTLS on, else None. Read at each
    handshake, so it follows rotation and a mesh started after this call; it
    fails closed (WorkloadCertificateExpiredError) once the certificate expired
    with no CA to renew it, rather than let the peer refuse it with a TLS alert."""
    if not getattr(mesh, "mtls", False):
        return None
    credentials: CredentialsSource = mesh.outbound_credentials
    return credentials


class _TransportsByIdentity:
    """One mTLS transport per expected-ID set, made on first use; subclasses
    name the sync or asyncio transport class."""

    _transport_class: type[Any]

    def __init__(self, mesh: Any, **options: Any) -> None:
        transport_class = self._transport_class

        def factory(
            credentials: CredentialsSource | None, expected: frozenset[str], **kw: Any
        ) -> Any:
            return transport_class(credentials, expected, **options, **kw)

        self._registry = _Registry(mesh_credentials(mesh), factory)


class TlsTransports(_TransportsByIdentity):
    """The sync mTLS transports of one MeshTransport, one per expected-ID set."""

    _transport_class = MtlsTransport

    def for_cluster(self, tls: UpstreamTls | None) -> MtlsTransport | None:
        """The transport for a cluster's upstream TLS; None: send it plaintext
        (no TLS asked for, or this mesh has no identity)."""
        transport: MtlsTransport | None = self._registry.get(tls)
        return transport

    def close(self) -> None:
        for transport in self._registry.drain():
            transport.close()


class AsyncTlsTransports(_TransportsByIdentity):
    """The asyncio twin of TlsTransports."""

    _transport_class = AsyncMtlsTransport

    def for_cluster(self, tls: UpstreamTls | None) -> AsyncMtlsTransport | None:
        transport: AsyncMtlsTransport | None = self._registry.get(tls)
        return transport

    async def aclose(self) -> None:
        for transport in self._registry.drain():
            await transport.aclose()
