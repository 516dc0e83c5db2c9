"""httpx transports that route requests through the mesh.

`MeshTransport` / `AsyncMeshTransport` wrap an inner httpx transport (by
default httpx's own). A request to a mesh service is routed, balanced, and
handed to the inner transport with the chosen endpoint's address in the URL;
the Host header still names the service, as it would through a sidecar.
Anything else passes through untouched (outbound policy ALLOW_ANY).

Retries, timeouts, limits and fault injection are decided by the sans-I/O
engine in `resilience` (`request_flow`) and run by its drivers (`drive`,
`drive_async`); everything request-shaped lives in `Exchange`, so the sync and
async transports differ only in how one try sends and waits. A try with a
timeout is bounded as a whole, its body included (`_httpx_deadline`).

The request's URL is restored after the call, so `response.request.url` is
what the caller asked for, not the endpoint.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

import httpx

from proxyless_mesh.integrations import _httpx_telemetry as telemetry_hooks
from proxyless_mesh.integrations._httpx_deadline import (
    AsyncBoundedBody,
    SyncBoundedBody,
    body_timeout,
)
from proxyless_mesh.integrations._httpx_exchange import (
    Exchange,
    failure_kind,
    passthrough_or_route,
)
from proxyless_mesh.integrations._httpx_urls import url_parts
from proxyless_mesh.integrations._pool import linear
from proxyless_mesh.integrations._tls_transport import AsyncTlsTransports, TlsTransports
from proxyless_mesh.resilience import AttemptResult, FailureKind, Send, drive, drive_async
from proxyless_mesh.runtime import passthrough_failure
from proxyless_mesh.telemetry import Call, QuietCall

if TYPE_CHECKING:
    from proxyless_mesh.runtime import Runtime


def _raise_passthrough_failure(
    mesh: Runtime, host: str, exc: httpx.ConnectError, request: httpx.Request
) -> NoReturn:
    """A passthrough connection that failed: the typed mesh error when the
    snapshot explains it, else the httpx error as it was. Called only on that
    failure, never on a request that connects."""
    typed = passthrough_failure(mesh.snapshot, host, exc, request)
    if typed is None:
        raise exc
    raise typed from exc


_Inner = TypeVar("_Inner", httpx.BaseTransport, httpx.AsyncBaseTransport)


class _MeshSetup(Generic[_Inner]):
    """The construction both mesh transports share; subclasses name httpx's
    sync or asyncio transport and their mTLS registry. Requests never pass here."""

    _default_inner: type[Any]
    _tls_class: type[Any]

    def __init__(self, mesh: Runtime, inner: _Inner | None = None) -> None:
        self._mesh = mesh
        self._inner: _Inner = inner if inner is not None else linear(self._default_inner())
        # Mutual TLS toward clusters whose xDS says so; one pool per identity set.
        self._tls = self._tls_class(mesh)


class MeshTransport(_MeshSetup[httpx.BaseTransport], httpx.BaseTransport):
    """Sync httpx transport: `httpx.Client(transport=mesh.httpx_transport())`."""

    _tls: TlsTransports
    _default_inner = httpx.HTTPTransport
    _tls_class = TlsTransports

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        telemetry = self._mesh.telemetry
        parts = url_parts(request.url)
        if not telemetry.enabled:
            return self._handle(request, parts, None)
        call = telemetry_hooks.client_call(telemetry, request, parts[0])
        if call is None:
            return self._handle(request, parts, None)
        try:
            response = self._handle(request, parts, call)
        except BaseException as exc:
            telemetry_hooks.raised(call, exc)
            raise
        return telemetry_hooks.responded(call, response)

    def _handle(
        self, request: httpx.Request, parts: tuple[str, str], call: Call | QuietCall | None
    ) -> httpx.Response:
        routed = passthrough_or_route(self._mesh, request, parts, blocking=True)
        if routed is None:  # the async twin differs by its awaits; a shared helper costs a call
            if call is not None:
                telemetry_hooks.passthrough(call)
            breaker = self._mesh.passthrough_breaker
            try:
                if breaker is None:
                    return self._inner.handle_request(request)
                return breaker.send(parts[0], self._inner.handle_request, request)
            except httpx.ConnectError as exc:
                _raise_passthrough_failure(self._mesh, parts[0], exc, request)
        if isinstance(routed, httpx.Response):
            return routed
        if routed.needs_body:
            request.read()
        exchange = _SyncExchange(self._mesh, request, routed, call)
        exchange.transport = self
        if exchange.mirrors:
            exchange.mirror(self._mirror_sync)
        try:
            finish = drive(exchange.flow, exchange.attempt, exchange.supersede)
            return exchange.conclude(finish, exchange.response)
        finally:
            exchange.restore()

    def _mirror_sync(self, copy: httpx.Request) -> None:
        self._mesh.background.submit(self._send_mirror, copy)

    def _send_mirror(self, copy: httpx.Request) -> None:
        """Fire and forget: a mirror's answer and failures never reach the caller."""
        try:
            self._inner.handle_request(copy).close()
        except httpx.HTTPError:
            self._mesh.count_mirror_failure()

    def close(self) -> None:
        self._tls.close()
        self._inner.close()


class AsyncMeshTransport(_MeshSetup[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport):
    """Async httpx transport: `httpx.AsyncClient(transport=mesh.async_httpx_transport())`."""

    _tls: AsyncTlsTransports
    _default_inner = httpx.AsyncHTTPTransport
    _tls_class = AsyncTlsTransports

    def __init__(self, mesh: Runtime, inner: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(mesh, inner)
        self._mirrors: set[asyncio.Task[None]] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        telemetry = self._mesh.telemetry
        parts = url_parts(request.url)
        if not telemetry.enabled:
            return await self._handle(request, parts, None)
        call = telemetry_hooks.client_call(telemetry, request, parts[0])
        if call is None:
            return await self._handle(request, parts, None)
        try:
            response = await self._handle(request, parts, call)
        except BaseException as exc:
            telemetry_hooks.raised(call, exc)
            raise
        return telemetry_hooks.responded(call, response)

    async def _handle(
        self, request: httpx.Request, parts: tuple[str, str], call: Call | QuietCall | None
    ) -> httpx.Response:
        routed = passthrough_or_route(self._mesh, request, parts, blocking=False)
        if routed is not None and not isinstance(routed, httpx.Response) and routed.unresolved:
            await self._mesh.resolve_async(routed.authority)
            routed = passthrough_or_route(self._mesh, request, parts, blocking=False, last_try=True)
        if routed is None:
            if call is not None:
                telemetry_hooks.passthrough(call)
            breaker = self._mesh.passthrough_breaker
            try:
                if breaker is None:
                    return await self._inner.handle_async_request(request)
                return await breaker.send_async(parts[0], self._inner.handle_async_request, request)
            except httpx.ConnectError as exc:
                _raise_passthrough_failure(self._mesh, parts[0], exc, request)
        if isinstance(routed, httpx.Response):
            return routed
        if routed.needs_body:
            await request.aread()
        exchange = _AsyncExchange(self._mesh, request, routed, call)
        exchange.transport = self
        if exchange.mirrors:
            exchange.mirror(self._mirror_async)
        try:
            flow = exchange.flow
            finish = await drive_async(flow, exchange.attempt, exchange.supersede_async)
            return exchange.conclude(finish, exchange.response)
        finally:
            exchange.restore()

    def _mirror_async(self, copy: httpx.Request) -> None:
        task = asyncio.get_running_loop().create_task(self._send_mirror(copy))
        self._mirrors.add(task)  # keep a reference until it is done
        task.add_done_callback(self._mirrors.discard)

    async def _send_mirror(self, copy: httpx.Request) -> None:
        try:
            response = await self._inner.handle_async_request(copy)
            await response.aclose()
        except httpx.HTTPError:
            self._mesh.count_mirror_failure()

    async def aclose(self) -> None:
        for task in list(self._mirrors):
            task.cancel()
        await self._tls.aclose()
        await self._inner.aclose()


# The tries are methods of the request's Exchange (bound methods for the
# drivers, no functools.partial made per request).


class _SyncExchange(Exchange):
    transport: MeshTransport

    def attempt(self, send: Send) -> AttemptResult:
        """One try (what `drive` calls per Send), bounded as a whole by its timeout."""
        if self.response is not None:  # a retry replaces it
            self.supersede()
        self.prepare(send)
        transport = self.transport
        inner = transport._tls.for_cluster(self.tls) or transport._inner
        request = self.request
        limit = send.timeout
        started = time.monotonic() if limit is not None else 0.0
        try:
            response = inner.handle_request(request)
        except httpx.TransportError as exc:
            return self.failed(send, failure_kind(exc), exc)
        if limit is not None:
            # httpx bounded each phase by `limit`; the try as a whole must be too.
            deadline = started + limit
            if time.monotonic() >= deadline:
                response.close()
                late = TimeoutError(f"per-try timeout of {limit:g}s passed before the head")
                return self.failed(send, FailureKind.TIMEOUT, late)
            response.stream = SyncBoundedBody(
                response.stream,  # type: ignore[arg-type]
                response.extensions.get("network_stream"),
                deadline,
                lambda: body_timeout(request, limit),
            )
        self.response = response
        return self.answered(send, response)


class _AsyncExchange(Exchange):
    transport: AsyncMeshTransport

    async def attempt(self, send: Send) -> AttemptResult:
        """One try (what `drive_async` calls per Send), bounded as a whole by its timeout."""
        if self.response is not None:  # a retry replaces it
            response, self.response = self.response, None
            await response.aclose()
        self.prepare(send)
        transport = self.transport
        inner = transport._tls.for_cluster(self.tls) or transport._inner
        request = self.request
        limit = send.timeout
        try:
            if limit is None:
                response = await inner.handle_async_request(request)
            else:
                deadline = asyncio.get_running_loop().time() + limit
                async with asyncio.timeout_at(deadline):
                    response = await inner.handle_async_request(request)
                response.stream = AsyncBoundedBody(
                    response.stream,  # type: ignore[arg-type]
                    deadline,
                    lambda: body_timeout(request, limit),
                )
        except (TimeoutError, httpx.TransportError) as exc:
            return self.failed(send, failure_kind(exc), exc)
        self.response = response
        return self.answered(send, response)
