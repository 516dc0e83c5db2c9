"""httpx transports that route requests through the mesh.

`MeshTransport` / `AsyncMeshTransport` wrap an inner httpx transport (by
default httpx's own). A request to a mesh service is routed, balanced, and
handed to the inner transport with the chosen endpoint's address in the URL;
the Host header still names the service, as it would through a sidecar.
Anything else passes through untouched (outbound policy ALLOW_ANY).

Retries, timeouts, limits and fault injection are decided by the sans-I/O
engine in `resilience` (`request_flow`); everything request-shaped that both
drivers share lives in `_Exchange`, so the sync and async transports differ
only in how they wait and send.

The request's URL is restored after the call, so `response.request.url` is
what the caller asked for, not the endpoint.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import httpx

from proxyless_mesh.integrations import _httpx_telemetry as telemetry_hooks
from proxyless_mesh.integrations._httpx_exchange import (
    Exchange,
    failure_kind,
    passthrough_or_route,
    url_parts,
)
from proxyless_mesh.integrations._pool import linear
from proxyless_mesh.integrations._tls_transport import AsyncTlsTransports, TlsTransports
from proxyless_mesh.resilience import AttemptResult, Send, Sleep
from proxyless_mesh.telemetry import Call, QuietCall

if TYPE_CHECKING:
    from proxyless_mesh.mesh import Mesh


class MeshTransport(httpx.BaseTransport):
    """Sync httpx transport: `httpx.Client(transport=mesh.httpx_transport())`."""

    def __init__(self, mesh: Mesh, inner: httpx.BaseTransport | None = None) -> None:
        self._mesh = mesh
        self._inner = inner if inner is not None else linear(httpx.HTTPTransport())
        # Mutual TLS toward clusters whose xDS says so; one pool per identity set.
        self._tls = TlsTransports(mesh)

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
        if routed is None:
            if call is not None:
                telemetry_hooks.passthrough(call)
            return self._inner.handle_request(request)
        if isinstance(routed, httpx.Response):
            return routed
        if routed.needs_body:
            request.read()
        exchange = Exchange(self._mesh, request, routed, call)
        exchange.mirror(self._mirror_sync)
        flow = exchange.flow
        reply: AttemptResult | None = None
        response: httpx.Response | None = None
        try:
            while True:
                try:
                    command = flow.send(reply)
                except StopIteration as stop:
                    return exchange.conclude(stop.value, response)
                if response is not None:  # superseded by a retry, a sleep or a wait
                    response.close()
                    response = None
                if isinstance(command, Send):
                    exchange.prepare(command)
                    inner = self._tls.for_cluster(exchange.tls) or self._inner
                    try:
                        response = inner.handle_request(request)
                    except httpx.TransportError as exc:
                        reply = exchange.failed(command, failure_kind(exc), exc)
                    else:
                        reply = exchange.answered(command, response)
                elif isinstance(command, Sleep):
                    time.sleep(command.seconds)
                    reply = None
                else:
                    command.ticket.wait(command.timeout)
                    reply = None
        finally:
            flow.close()
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


class AsyncMeshTransport(httpx.AsyncBaseTransport):
    """Async httpx transport: `httpx.AsyncClient(transport=mesh.async_httpx_transport())`."""

    def __init__(self, mesh: Mesh, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._mesh = mesh
        self._inner = inner if inner is not None else linear(httpx.AsyncHTTPTransport())
        self._tls = AsyncTlsTransports(mesh)
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
            return await self._inner.handle_async_request(request)
        if isinstance(routed, httpx.Response):
            return routed
        if routed.needs_body:
            await request.aread()
        exchange = Exchange(self._mesh, request, routed, call)
        exchange.mirror(self._mirror_async)
        flow = exchange.flow
        reply: AttemptResult | None = None
        response: httpx.Response | None = None
        try:
            while True:
                try:
                    command = flow.send(reply)
                except StopIteration as stop:
                    return exchange.conclude(stop.value, response)
                if response is not None:
                    await response.aclose()
                    response = None
                if isinstance(command, Send):
                    exchange.prepare(command)
                    inner = self._tls.for_cluster(exchange.tls) or self._inner
                    try:
                        if command.timeout is None:
                            response = await inner.handle_async_request(request)
                        else:
                            # A real bound on the whole try (httpx's own
                            # timeouts are per I/O phase).
                            async with asyncio.timeout(command.timeout):
                                response = await inner.handle_async_request(request)
                    except TimeoutError as exc:
                        reply = exchange.failed(command, failure_kind(exc), exc)
                    except httpx.TransportError as exc:
                        reply = exchange.failed(command, failure_kind(exc), exc)
                    else:
                        reply = exchange.answered(command, response)
                elif isinstance(command, Sleep):
                    await asyncio.sleep(command.seconds)
                    reply = None
                else:
                    await command.ticket.wait_async(command.timeout)
                    reply = None
        finally:
            flow.close()
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
