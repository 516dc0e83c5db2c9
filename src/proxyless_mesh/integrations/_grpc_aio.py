"""The asyncio twin of `_grpc_client`: `AioMeshChannel` and its callables,
driving the same `_Exchange` from `_grpc_exchange` with awaits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from proxyless_mesh.integrations import _grpc_client_telemetry as telemetry_hooks
from proxyless_mesh.resilience import AttemptResult, Send, drive_async
from proxyless_mesh.routing import RouteDecision
from proxyless_mesh.runtime import UNRESOLVED
from proxyless_mesh.telemetry import Call

if TYPE_CHECKING:
    pass


from proxyless_mesh.integrations._grpc_client import ChannelBase, _Callable
from proxyless_mesh.integrations._grpc_exchange import (
    _SC,
    _UNARY_RESPONSE,
    _Exchange,
    _Replay,
)

Metadata = Sequence[tuple[str, str | bytes]] | None


class _Deferred:
    """Returned by an aio one-try call made before the authority was ever
    resolved: awaiting (or iterating) it resolves first, then makes the real
    call. Later calls return grpcio's own call objects."""

    def __init__(self, start: Callable[[], Any]) -> None:
        self._start = start

    def __await__(self) -> Any:
        return self._run().__await__()

    async def _run(self) -> Any:
        call = await self._start()
        return await call

    async def __aiter__(self) -> Any:
        call = await self._start()
        async for message in call:
            yield message


class _Driven:
    """An aio unary-response call the engine drives: awaiting it gives the
    response. (It is not a full grpc.aio.Call: its tries are several calls.)"""

    def __init__(self, run: Callable[[], Any]) -> None:
        self._run = run

    def __await__(self) -> Any:
        return self._run().__await__()


_pending: set[asyncio.Task[None]] = set()  # balancer reports still running


def _aio_report(report: Callable[[Any], None] | None) -> Callable[[Any], None] | None:
    """aio calls say their code through a coroutine: report from a task."""
    if report is None:
        return None

    async def record(finished: Any) -> None:
        report(_Finished(await finished.code(), await finished.details()))

    def done(finished: Any) -> None:
        task = asyncio.get_running_loop().create_task(record(finished))
        _pending.add(task)
        task.add_done_callback(_pending.discard)

    return done


class _Finished:
    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


class _AioCallable(_Callable):
    def _call_once(
        self,
        decided: Any,
        request: Any,
        timeout: float | None,
        metadata: Metadata,
        kw: dict[str, Any],
        call: Call | None,
    ) -> Any:
        multi, deadline, metadata, report = self._one_try(decided, timeout, metadata, call)
        result = multi(request, timeout=deadline, metadata=metadata, **kw)
        done = _aio_report(report)
        if done is not None:
            result.add_done_callback(done)
        return result if call is None else telemetry_hooks.aio_result(call, result)

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: Metadata = None,
        **kw: Any,
    ) -> Any:
        router = self.channel.router
        call = telemetry_hooks.client_call(router.mesh.telemetry, router.authority, self.method)
        driven = self.kind in _UNARY_RESPONSE and (
            self.kind == "unary_unary" or request is not None
        )
        if driven:
            return _Driven(lambda: self._drive(request, timeout, metadata, kw, call))
        try:
            decided = router.decide(self.method, metadata, call)
            if decided is not UNRESOLVED:
                return self._call_once(decided, request, timeout, metadata, kw, call)
        except BaseException as exc:
            if call is not None:
                telemetry_hooks.failed(call, exc)
            raise

        async def start() -> Any:
            try:
                await router.mesh.resolve_async(router.authority)
                again = router.decide(self.method, metadata, call)
                if again is UNRESOLVED:
                    raise router.unresolved()
                return self._call_once(again, request, timeout, metadata, kw, call)
            except BaseException as exc:
                if call is not None:
                    telemetry_hooks.failed(call, exc)
                raise

        return _Deferred(start)

    async def _drive(
        self,
        request: Any,
        timeout: float | None,
        metadata: Metadata,
        kw: dict[str, Any],
        call: Call | None,
    ) -> Any:
        router = self.channel.router
        try:
            decision = router.route(self.method, metadata, call)
            if decision is UNRESOLVED:
                await router.mesh.resolve_async(router.authority)
                decision = router.route(self.method, metadata, call)
                if decision is UNRESOLVED:
                    raise router.unresolved()
            if decision is None:
                # Not a mesh call: telemetry's outbound hook marks it done.
                result = await self._call_once(
                    (None, None, None), request, timeout, metadata, kw, call
                )
            else:
                result = await self._tries(decision, request, timeout, metadata, kw, call)
        except BaseException as exc:
            if call is not None:
                telemetry_hooks.failed(call, exc)
            raise
        if call is not None:
            telemetry_hooks.sync_result(call, self.kind, "call", result)
        return result

    async def _tries(
        self,
        decision: RouteDecision,
        request: Any,
        timeout: float | None,
        metadata: Metadata,
        kw: dict[str, Any],
        call: Call | None,
    ) -> Any:
        exchange = _Exchange(self.channel, self, decision, timeout, metadata, call)
        replay = _Replay(request) if self.kind == "stream_unary" else None
        last: Any = None

        async def attempt(command: Send) -> AttemptResult:
            nonlocal last
            multi, md = exchange.prepare(command)
            message = replay.aview() if replay is not None else request
            try:
                rpc = multi(message, timeout=command.timeout, metadata=md, **kw)
                last = await rpc
            except asyncio.CancelledError:
                exchange.ended(command, _SC.CANCELLED, None)  # the caller gave up
                raise
            except grpc.RpcError as exc:
                last = exc
                telemetry_hooks.peer_from_trailers(call, exc)
                return exchange.ended(command, exc.code(), exc.details())
            if call is not None:
                telemetry_hooks.peer_from_trailers(call, await rpc.trailing_metadata())
            return exchange.ended(command, _SC.OK, None)

        def supersede() -> None:
            nonlocal last
            last = None

        finish = await drive_async(exchange.flow, attempt, supersede)
        return exchange.conclude(finish, last)


class _AioUnaryUnary(_AioCallable, grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[misc,type-arg]
    pass


class _AioUnaryStream(_AioCallable, grpc.aio.UnaryStreamMultiCallable):  # type: ignore[misc,type-arg]
    pass


class _AioStreamUnary(_AioCallable, grpc.aio.StreamUnaryMultiCallable):  # type: ignore[misc,type-arg]
    pass


class _AioStreamStream(_AioCallable, grpc.aio.StreamStreamMultiCallable):  # type: ignore[misc,type-arg]
    pass


class AioMeshChannel(ChannelBase, grpc.aio.Channel):  # type: ignore[misc]
    """A grpc.aio.Channel whose calls the mesh routes: `mesh.aio_grpc_channel(target)`."""

    new_channel = staticmethod(grpc.aio.insecure_channel)
    new_secure_channel = staticmethod(grpc.aio.secure_channel)
    callables = {
        "unary_unary": _AioUnaryUnary,
        "unary_stream": _AioUnaryStream,
        "stream_unary": _AioStreamUnary,
        "stream_stream": _AioStreamStream,
    }

    async def channel_ready(self) -> None:
        """Ready when the control plane has said what the target is."""
        router = self.router
        if not router.mesh.snapshot.knows(router.authority):
            await router.mesh.resolve_async(router.authority)
            if not router.mesh.snapshot.knows(router.authority):
                raise router.unresolved()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """A meshed channel has no single connectivity state; it never changes."""

    async def close(self, grace: float | None = None) -> None:
        for channel in self.subchannels.all():
            await channel.close(grace)
        if self._passthrough is not None:
            await self._passthrough.close(grace)
        await asyncio.to_thread(self.subchannels.close_bridge)  # joins the bridge's thread

    async def __aenter__(self) -> AioMeshChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
