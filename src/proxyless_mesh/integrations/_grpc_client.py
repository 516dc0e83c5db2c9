"""gRPC client channels in library mode: the mesh picks the endpoint per call.

`MeshChannel` (sync) and `AioMeshChannel` (asyncio) look like grpcio
channels to stubs. Each call is routed like an HTTP request — the authority
is the channel's target, the path is the method (`/pkg.Service/Method`), the
method is POST and the headers are the call's metadata — then sent over a
plain grpcio sub-channel to the chosen endpoint. Sub-channels are kept per
endpoint and reused.

Unary-response calls (unary-unary and stream-unary; sync `__call__` /
`with_call`, aio await) go through the resilience engine (`request_flow`),
as httpx requests do: fault injection (a delay; an abort raises an RpcError
with the fault's grpcStatus, or the gRPC code for its httpStatus), the
cluster's circuit breakers (overflow fails at once: UNAVAILABLE, flag UO),
retries on gRPC status codes per the route's RetryPolicy (Istio's default
retries UNAVAILABLE and CANCELLED, each retry on another endpoint, with
Envoy's jittered backoff), the per-try timeout, and the route timeout as
the call's deadline (bounded by the caller's `timeout=`; grpcio sends it as
`grpc-timeout`, so the server sees what is left of it). Retry decisions
follow gRFC A44: a gRPC client sees statuses, so a connection failure is a
retryable UNAVAILABLE, not an Envoy `connect-failure`; only a per-try
timeout that fired locally is a timeout to the engine. A client stream is
recorded in memory as it is sent so a retry can replay it (as Envoy buffers
a request body); very large client streams cost that memory.

Every try's outcome goes to the balancer for outlier detection, with
Envoy's mapping of gRPC status to HTTP status (UNAVAILABLE 503 and
DEADLINE_EXCEEDED 504 are gateway errors, INTERNAL/UNKNOWN/DATA_LOSS 500 are
5xx); a connection that could not be made and a local per-try timeout are
local-origin failures.

Not through the engine, one try each (stated, not hidden): server-streaming
and bidi calls (gRFC A44 would allow retries only before the first response
message; we do not retry them at all), sync `.future()` calls, and aio
stream-unary calls made without a request iterator (`call.write()` style).
They are still routed and balanced, bounded by the route timeout, and their
outcome is reported to the balancer, so new calls avoid ejected endpoints.

Failures the mesh produces are `MeshRpcError`s (a `grpc.RpcError` and a
`grpc.Call`) with gRPC's status for them: UNAVAILABLE for no route, no
endpoint, overflow or an unknown service (as grpcio's own xDS client
answers), DEADLINE_EXCEEDED when the route timeout passed. The Envoy response
flags are in the trailing metadata under `x-mesh-response-flags`.

Security: a sub-channel to an endpoint of a cluster that requires mTLS goes
through the in-process TLS bridge (`_grpc_tls_bridge`), which checks the
server's SPIFFE ID before forwarding: grpcio's own TLS checks the server's
name against DNS/IP SANs and the mesh's workload certificates carry only a
SPIFFE URI SAN, which `ssl_target_name_override` cannot name. A mesh without
an identity sends plaintext, as the httpx transports do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from proxyless_mesh.errors import MeshRequestError
from proxyless_mesh.integrations import _grpc_client_telemetry as telemetry_hooks
from proxyless_mesh.resilience import AttemptResult, Send, drive
from proxyless_mesh.routing import RouteDecision
from proxyless_mesh.runtime import UNRESOLVED, pick_endpoint
from proxyless_mesh.telemetry import Call

if TYPE_CHECKING:
    from proxyless_mesh.runtime import Runtime


from proxyless_mesh.integrations._grpc_exchange import (
    _SC,
    _UNARY_RESPONSE,
    _Exchange,
    _Replay,
    _Router,
    _stream_report,
    bounded,
    rpc_error,
)
from proxyless_mesh.integrations._grpc_tls_bridge import MeshSubChannels

Metadata = Sequence[tuple[str, str | bytes]] | None


class _Callable:
    """What sync and aio multi-callables share: the method and its codecs."""

    def __init__(
        self,
        channel: Any,
        kind: str,
        method: str,
        serializer: Callable[[Any], bytes] | None,
        deserializer: Callable[[bytes], Any] | None,
    ) -> None:
        self.channel = channel
        self.kind = kind
        self.method = method
        self.serializer = serializer
        self.deserializer = deserializer

    def _one_try(
        self, decided: Any, timeout: float | None, metadata: Metadata, call: Call | None
    ) -> tuple[Any, float | None, Metadata, Callable[[Any], None] | None]:
        """(multi-callable, deadline, metadata, balancer report) for a call
        the engine does not drive."""
        endpoint, route_timeout, balancer = decided
        channel = self.channel
        sub = channel.passthrough() if endpoint is None else channel.subchannels.get(endpoint)
        serializer, deserializer = self.serializer, self.deserializer
        if call is not None:
            serializer, deserializer, metadata = telemetry_hooks.outbound(
                call, endpoint, serializer, deserializer, metadata
            )
        multi = getattr(sub, self.kind)(
            self.method, request_serializer=serializer, response_deserializer=deserializer
        )
        return multi, bounded(timeout, route_timeout), metadata, _stream_report(balancer, endpoint)


class _SyncCallable(_Callable):
    def _decided(self, metadata: Metadata, call: Call | None) -> Any:
        router = self.channel.router
        decision = router.route(self.method, metadata, call)
        if decision is UNRESOLVED:
            router.mesh.resolve_blocking(router.authority)
            decision = router.route(self.method, metadata, call)
            if decision is UNRESOLVED:
                raise router.unresolved()
        return decision

    def _invoke(
        self, how: str, request: Any, timeout: float | None, metadata: Metadata, kw: Any
    ) -> Any:
        router = self.channel.router
        call = telemetry_hooks.client_call(router.mesh.telemetry, router.authority, self.method)
        try:
            decision = self._decided(metadata, call)
            if decision is not None and how != "future" and self.kind in _UNARY_RESPONSE:
                result = self._drive(decision, how, request, timeout, metadata, kw, call)
            else:
                result = self._single(decision, how, request, timeout, metadata, kw, call)
        except BaseException as exc:
            if call is not None:
                telemetry_hooks.failed(call, exc)
            raise
        return result if call is None else telemetry_hooks.sync_result(call, self.kind, how, result)

    def _single(
        self,
        decision: RouteDecision | None,
        how: str,
        request: Any,
        timeout: float | None,
        metadata: Metadata,
        kw: Any,
        call: Call | None,
    ) -> Any:
        if decision is None:
            decided: Any = (None, None, None)
        else:
            router = self.channel.router
            snapshot = router.mesh.snapshot
            try:
                endpoint = pick_endpoint(snapshot, router.authority, decision)
            except MeshRequestError as exc:
                raise rpc_error(exc) from exc
            decided = (endpoint, decision.timeout, snapshot.balancers.get(decision.cluster))
        multi, deadline, metadata, report = self._one_try(decided, timeout, metadata, call)
        invoke = multi if how == "call" else getattr(multi, how)
        try:
            result = invoke(request, timeout=deadline, metadata=metadata, **kw)
        except grpc.RpcError as exc:
            if report is not None:
                report(exc)
            raise
        if report is not None:
            if self.kind in _UNARY_RESPONSE and how != "future":
                report(result[1] if how == "with_call" else _OK)
            else:
                result.add_done_callback(report)
        return result

    def _drive(
        self,
        decision: RouteDecision,
        how: str,
        request: Any,
        timeout: float | None,
        metadata: Metadata,
        kw: Any,
        call: Call | None,
    ) -> Any:
        exchange = _Exchange(self.channel, self, decision, timeout, metadata, call)
        replay = _Replay(request) if self.kind == "stream_unary" else None
        last: Any = None

        def attempt(command: Send) -> AttemptResult:
            nonlocal last
            multi, md = exchange.prepare(command)
            message = replay.view() if replay is not None else request
            try:
                response, done = multi.with_call(
                    message, timeout=command.timeout, metadata=md, **kw
                )
            except grpc.RpcError as exc:
                last = exc
                telemetry_hooks.peer_from_trailers(call, exc)
                return exchange.ended(command, exc.code(), exc.details())
            telemetry_hooks.peer_from_trailers(call, done)
            last = (response, done) if how == "with_call" else response
            return exchange.ended(command, _SC.OK, None)

        def supersede() -> None:
            nonlocal last
            last = None

        finish = drive(exchange.flow, attempt, supersede)
        return exchange.conclude(finish, last)

    def __call__(
        self, request: Any, timeout: float | None = None, metadata: Metadata = None, **kw: Any
    ) -> Any:
        return self._invoke("call", request, timeout, metadata, kw)

    def with_call(
        self, request: Any, timeout: float | None = None, metadata: Metadata = None, **kw: Any
    ) -> Any:
        return self._invoke("with_call", request, timeout, metadata, kw)

    def future(
        self, request: Any, timeout: float | None = None, metadata: Metadata = None, **kw: Any
    ) -> Any:
        return self._invoke("future", request, timeout, metadata, kw)


class _Ok:
    """The finished state of a unary call that returned (for the balancer report)."""

    def code(self) -> grpc.StatusCode:
        return _SC.OK

    def details(self) -> str:
        return ""


_OK = _Ok()


class _UnaryUnary(_SyncCallable, grpc.UnaryUnaryMultiCallable):  # type: ignore[misc,type-arg]
    pass


class _UnaryStream(_SyncCallable, grpc.UnaryStreamMultiCallable):  # type: ignore[misc,type-arg]
    pass


class _StreamUnary(_SyncCallable, grpc.StreamUnaryMultiCallable):  # type: ignore[misc,type-arg]
    pass


class _StreamStream(_SyncCallable, grpc.StreamStreamMultiCallable):  # type: ignore[misc,type-arg]
    pass


def _factory(kind: str) -> Callable[..., Any]:
    """A channel's `unary_unary` (etc.): the channel's callable class for `kind`."""

    def make(
        channel: ChannelBase,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return channel.callables[kind](
            channel, kind, method, request_serializer, response_deserializer
        )

    make.__name__ = make.__qualname__ = kind
    return make


class ChannelBase:
    """What the sync and aio mesh channels share: the router, the sub-channels
    per endpoint, the passthrough channel and the four multi-callable
    factories (each channel class names its plain-channel constructor and
    its callable classes)."""

    new_channel: Callable[..., Any]  # grpc.insecure_channel or its aio twin
    new_secure_channel: Callable[..., Any]  # grpc.secure_channel (TLS origination) or its twin
    callables: dict[str, type[_Callable]]

    def __init__(self, mesh: Runtime, target: str, options: Sequence[tuple[str, Any]] = ()) -> None:
        self.router = _Router(mesh, target)
        self.subchannels = MeshSubChannels(mesh, options, self.new_channel, self.new_secure_channel)
        self._target = target
        self._options = tuple(options)
        self._passthrough: Any = None

    def passthrough(self) -> Any:
        """A plain channel to the target itself, for non-mesh hosts (ALLOW_ANY)."""
        if self._passthrough is None:
            self._passthrough = self.new_channel(self.router.authority, options=self._options)
        return self._passthrough

    unary_unary = _factory("unary_unary")
    unary_stream = _factory("unary_stream")
    stream_unary = _factory("stream_unary")
    stream_stream = _factory("stream_stream")


class MeshChannel(ChannelBase, grpc.Channel):  # type: ignore[misc]
    """A sync grpc.Channel whose calls the mesh routes: `mesh.grpc_channel(target)`."""

    new_channel = staticmethod(grpc.insecure_channel)
    new_secure_channel = staticmethod(grpc.secure_channel)
    callables = {
        "unary_unary": _UnaryUnary,
        "unary_stream": _UnaryStream,
        "stream_unary": _StreamUnary,
        "stream_stream": _StreamStream,
    }

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        """Connectivity of a meshed channel is per endpoint; nothing to report."""

    def unsubscribe(self, callback: Any) -> None:
        """See subscribe()."""

    def close(self) -> None:
        for channel in self.subchannels.all():
            channel.close()
        if self._passthrough is not None:
            self._passthrough.close()
        self.subchannels.close_bridge()

    def __enter__(self) -> MeshChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
