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

Security: library-mode gRPC channels are plaintext; use native mode
(`native=True`) for mTLS, which grpcio supports via xds credentials.
grpcio's TLS always checks the server's name against DNS/IP SANs and the
mesh's workload certificates carry only a SPIFFE URI SAN, which
`ssl_target_name_override` cannot name.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from proxyless_mesh._outbound import UNRESOLVED, pick_endpoint, route_request
from proxyless_mesh.balancer import Outcome, hash_key
from proxyless_mesh.errors import MeshRequestError, MeshRpcError
from proxyless_mesh.model import Endpoint
from proxyless_mesh.resilience import AttemptResult, FailureKind, Finish, Send, Sleep, request_flow
from proxyless_mesh.routing import RouteDecision
from proxyless_mesh.telemetry import Call
from proxyless_mesh.telemetry import _grpc_client as telemetry_hooks

if TYPE_CHECKING:
    from proxyless_mesh.mesh import Mesh

Metadata = Sequence[tuple[str, str | bytes]] | None

_STATUS_FOR_FLAG = {"UT": grpc.StatusCode.DEADLINE_EXCEEDED}
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_SC = grpc.StatusCode
# Envoy's Grpc::Utility::grpcToHttpStatus, for outlier detection.
_HTTP_FOR_GRPC = {
    _SC.OK: 200, _SC.CANCELLED: 499, _SC.INVALID_ARGUMENT: 400, _SC.DEADLINE_EXCEEDED: 504,
    _SC.NOT_FOUND: 404, _SC.ALREADY_EXISTS: 409, _SC.PERMISSION_DENIED: 403,
    _SC.RESOURCE_EXHAUSTED: 429, _SC.FAILED_PRECONDITION: 400, _SC.ABORTED: 409,
    _SC.OUT_OF_RANGE: 400, _SC.UNIMPLEMENTED: 501, _SC.UNAVAILABLE: 503,
    _SC.UNAUTHENTICATED: 401,
}  # fmt: skip
# The gRPC spec's HTTP-to-gRPC mapping, for a fault abort given as httpStatus.
_GRPC_FOR_HTTP = {
    400: _SC.INTERNAL, 401: _SC.UNAUTHENTICATED, 403: _SC.PERMISSION_DENIED,
    404: _SC.UNIMPLEMENTED, 429: _SC.UNAVAILABLE, 502: _SC.UNAVAILABLE,
    503: _SC.UNAVAILABLE, 504: _SC.UNAVAILABLE,
}  # fmt: skip
_UNARY_RESPONSE = frozenset({"unary_unary", "stream_unary"})


def normalize_target(target: str) -> str:
    """`host:port` of a channel target (`xds:///h:p`, `dns:///h:p` or `h:p`)."""
    for scheme in ("xds:///", "dns:///", "mesh:///"):
        if target.startswith(scheme):
            target = target[len(scheme) :]
            break
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"a mesh gRPC target needs host:port, got {target!r}")
    return f"{host.lower()}:{port}"


def _metadata_lookup(metadata: Metadata) -> Callable[[str], str | None]:
    """Header lookup over call metadata: values of a repeated key are joined
    with "," as Envoy joins repeated headers."""

    def lookup(name: str) -> str | None:
        if not metadata:
            return None
        values = [
            v.decode("latin-1") if isinstance(v, bytes) else v
            for k, v in metadata
            if k.lower() == name
        ]
        return ",".join(values) if values else None

    return lookup


def rpc_error(exc: MeshRequestError) -> MeshRpcError:
    code = _STATUS_FOR_FLAG.get(exc.response_flag, grpc.StatusCode.UNAVAILABLE)
    return MeshRpcError(code, f"{exc} [{exc.response_flag}]", exc.response_flag)


def bounded(timeout: float | None, route_timeout: float | None) -> float | None:
    """The call's deadline: the caller's, bounded by the route timeout (0:
    none, as in Envoy)."""
    if not route_timeout:
        return timeout
    return route_timeout if timeout is None else min(timeout, route_timeout)


def _is_connect_failure(code: grpc.StatusCode, details: str | None) -> bool:
    """grpcio's words when no connection could be made to the endpoint."""
    return code is _SC.UNAVAILABLE and "failed to connect" in (details or "").lower()


def outcome_of(code: grpc.StatusCode, details: str | None, local_timeout: bool) -> Outcome:
    """What outlier detection counts for a call that ended with `code`."""
    if local_timeout or _is_connect_failure(code, details):
        return Outcome.LOCAL_ORIGIN_FAILURE
    return Outcome.of_status(_HTTP_FOR_GRPC.get(code, 500))


class _SubChannels:
    """One grpcio channel per endpoint, created on first use."""

    def __init__(self, options: Sequence[tuple[str, Any]], factory: Callable[..., Any]) -> None:
        self._options = tuple(options)
        self._factory = factory
        self._channels: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()  # creation only; lookups are lock-free dict reads

    def get(self, endpoint: Endpoint) -> Any:
        key = (endpoint.address, endpoint.port)
        channel = self._channels.get(key)
        if channel is None:
            with self._lock:
                channel = self._channels.get(key)
                if channel is None:
                    host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
                    channel = self._factory(f"{host}:{endpoint.port}", options=self._options)
                    self._channels[key] = channel
        return channel

    def all(self) -> list[Any]:
        return list(self._channels.values())


class _Router:
    """Shared by sync and async channels: route one call."""

    def __init__(self, mesh: Mesh, target: str) -> None:
        self.mesh = mesh
        self.authority = normalize_target(target)

    def route(self, method: str, metadata: Metadata, call: Call | None) -> Any:
        """A RouteDecision, None to pass the call through, or UNRESOLVED."""
        snapshot = self.mesh.snapshot
        try:
            decision = route_request(
                snapshot,
                self.authority,
                method,
                "POST",
                _metadata_lookup(metadata),
                outbound_policy=self.mesh.outbound_policy,
            )
        except MeshRequestError as exc:
            raise rpc_error(exc) from exc
        if isinstance(decision, RouteDecision) and call is not None:
            telemetry_hooks.routed(call, snapshot, decision)
        return decision

    def decide(self, method: str, metadata: Metadata, call: Call | None = None) -> Any:
        """For one-try calls: (endpoint, route timeout, balancer); (None,
        None, None) to pass the call through; UNRESOLVED when the authority is
        not known yet."""
        decision = self.route(method, metadata, call)
        if decision is None:
            return None, None, None
        if decision is UNRESOLVED:
            return UNRESOLVED
        snapshot = self.mesh.snapshot
        try:
            endpoint = pick_endpoint(snapshot, self.authority, decision)
        except MeshRequestError as exc:
            raise rpc_error(exc) from exc
        return endpoint, decision.timeout, snapshot.balancers.get(decision.cluster)

    def unresolved(self) -> MeshRpcError:
        return MeshRpcError(
            grpc.StatusCode.UNAVAILABLE,
            f"could not learn whether {self.authority} is a mesh service from the control "
            f"plane ({self.mesh.control_plane}) within {self.mesh.resolve_timeout:g}s [NC]",
            "NC",
        )


class _Replay:
    """A client stream recorded as it is consumed, so each try (a retry
    included) can send the same messages: `view()` replays what was read,
    then reads on from the source. Tries never overlap; the lock covers a
    previous try's grpcio thread still finishing a read."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self._seen: list[Any] = []
        self._lock = threading.Lock()
        self._iter: Any = None
        self._done = False

    def view(self) -> Iterator[Any]:
        index = 0
        while True:
            with self._lock:
                if index >= len(self._seen):
                    if self._done:
                        return
                    if self._iter is None:
                        self._iter = iter(self._source)
                    try:
                        self._seen.append(next(self._iter))
                    except StopIteration:
                        self._done = True
                        return
                item = self._seen[index]
            index += 1
            yield item

    async def aview(self) -> AsyncIterator[Any]:
        index = 0
        while True:
            if index >= len(self._seen):
                if self._done:
                    return
                if self._iter is None:
                    source = self._source
                    self._iter = aiter(source) if hasattr(source, "__aiter__") else iter(source)
                try:
                    if hasattr(self._iter, "__anext__"):
                        item = await anext(self._iter)
                    else:
                        item = next(self._iter)
                except (StopIteration, StopAsyncIteration):
                    self._done = True
                    return
                self._seen.append(item)
            item = self._seen[index]
            index += 1
            yield item


class _Exchange:
    """One unary-response call on its way through `request_flow`: what the
    sync and async drivers share (they differ only in how they wait and send)."""

    def __init__(
        self,
        channel: Any,
        callable_: _Callable,
        decision: RouteDecision,
        timeout: float | None,
        metadata: Metadata,
        call: Call | None,
    ) -> None:
        mesh = channel.router.mesh
        snapshot = mesh.snapshot
        self.channel = channel
        self.callable = callable_
        self.metadata = list(metadata or ())
        self.call = call
        self.serializers: tuple[Any, Any] | None = None
        self.started = 0.0
        balancer = snapshot.balancers.get(decision.cluster)
        self.balancer = balancer
        route = decision.route
        action = route.action if route is not None else None
        source = snapshot.sources.get(decision.cluster)
        cluster = source.cluster if source is not None else None
        authority = channel.router.authority

        key = None
        if action is not None and action.hash_policies:
            # Header policies hash metadata; gRPC has no cookies or query.
            key, _cookie = hash_key(
                action.hash_policies,
                header=_metadata_lookup(metadata),
                cookie=_none,
                query=_none,
                source_ip=mesh.bootstrap.node_id,
            )

        def pick(exclude: Any) -> Endpoint | None:
            return balancer.pick(key, exclude) if balancer is not None else None

        def reason() -> str:
            if balancer is None:
                return f"{authority}: this client does not have the cluster yet"
            return f"{authority}: {balancer.reason}"

        self.flow = request_flow(
            route_name=decision.route_name,
            cluster=decision.cluster,
            policy=action.retry_policy if action is not None else None,
            route_timeout=bounded(timeout, decision.timeout),
            pick=pick,
            resources=mesh.cluster_resources(decision.cluster, cluster),
            clock=time.monotonic,
            rng=mesh.rng,
            replayable=True,
            fault=route.fault if route is not None else None,
            no_endpoint_reason=reason,
        )

    def prepare(self, send: Send) -> tuple[Any, list[tuple[str, Any]]]:
        """The sub-channel's multi-callable for this try and its metadata."""
        endpoint = send.endpoint
        c = self.callable
        serializer, deserializer = c.serializer, c.deserializer
        metadata = list(self.metadata)
        call = self.call
        if call is not None:
            if self.serializers is None:  # counting (de)serializers, made once
                serializer, deserializer, metadata = telemetry_hooks.outbound(
                    call, endpoint, serializer, deserializer, metadata
                )
                self.serializers = serializer, deserializer
            else:
                serializer, deserializer = self.serializers
                call.attempt_start(send.attempt, endpoint.address, endpoint.port,
                                   lambda k, v: metadata.append((k, v)))  # fmt: skip
        metadata.extend(send.headers)
        sub = self.channel.subchannels.get(endpoint)
        multi = getattr(sub, c.kind)(
            c.method, request_serializer=serializer, response_deserializer=deserializer
        )
        if self.balancer is not None:
            self.balancer.on_start(endpoint)
        self.started = time.monotonic()
        return multi, metadata

    def ended(self, send: Send, code: grpc.StatusCode, details: str | None) -> AttemptResult:
        """Report one try's status to the balancer, telemetry and the engine."""
        local_timeout = (
            code is _SC.DEADLINE_EXCEEDED
            and send.timeout is not None
            and time.monotonic() - self.started >= send.timeout * 0.9
        )
        if self.balancer is not None:
            self.balancer.on_finish(send.endpoint, outcome_of(code, details, local_timeout))
        if local_timeout:
            if self.call is not None:
                self.call.attempt_end(None, FailureKind.TIMEOUT.value)
            return AttemptResult(failure=FailureKind.TIMEOUT)
        if self.call is not None:
            self.call.attempt_end(200, None)
        return AttemptResult(status=200, grpc_status=code.value[0])

    def conclude(self, finish: Finish, last: Any) -> Any:
        """The call's answer: the last try's response (or its RpcError), or
        the mesh's own MeshRpcError."""
        flags = ",".join(finish.flags)
        if finish.use_last_response:
            if isinstance(last, BaseException):
                raise last
            return last
        if finish.abort_grpc_status is not None or finish.abort_status is not None:
            code = (
                _CODE_BY_NUMBER.get(finish.abort_grpc_status, _SC.UNKNOWN)
                if finish.abort_grpc_status is not None
                else _GRPC_FOR_HTTP.get(finish.abort_status or 0, _SC.UNKNOWN)
            )
            raise MeshRpcError(code, f"fault filter abort [{flags}]", flags)
        failure = finish.error
        if failure is None:  # the engine promises one outcome; be loud if not
            raise RuntimeError(f"request flow ended without an outcome: {finish}")
        code = _STATUS_FOR_FLAG.get(failure.flag, _SC.UNAVAILABLE)
        error = MeshRpcError(code, f"{failure.message} [{flags}]", flags or failure.flag)
        raise error from last if isinstance(last, BaseException) else None


def _none(name: str) -> None:
    return None


def _stream_report(balancer: Any, endpoint: Endpoint | None) -> Callable[[Any], None] | None:
    """A done-callback reporting a one-try call's outcome to the balancer."""
    if balancer is None or endpoint is None:
        return None
    balancer.on_start(endpoint)

    def report(finished: Any) -> None:
        code = finished.code()
        balancer.on_finish(endpoint, outcome_of(code, finished.details(), local_timeout=False))

    return report


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
        flow = exchange.flow
        reply: AttemptResult | None = None
        last: Any = None
        try:
            while True:
                try:
                    command = flow.send(reply)
                except StopIteration as stop:
                    return exchange.conclude(stop.value, last)
                last = None
                if isinstance(command, Send):
                    multi, md = exchange.prepare(command)
                    message = replay.view() if replay is not None else request
                    try:
                        response, done = multi.with_call(
                            message, timeout=command.timeout, metadata=md, **kw
                        )
                    except grpc.RpcError as exc:
                        last = exc
                        reply = exchange.ended(command, exc.code(), exc.details())
                    else:
                        last = (response, done) if how == "with_call" else response
                        reply = exchange.ended(command, _SC.OK, None)
                elif isinstance(command, Sleep):
                    time.sleep(command.seconds)
                    reply = None
                else:
                    command.ticket.wait(command.timeout)
                    reply = None
        finally:
            flow.close()

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


class MeshChannel(grpc.Channel):  # type: ignore[misc]
    """A sync grpc.Channel whose calls the mesh routes: `mesh.grpc_channel(target)`."""

    def __init__(self, mesh: Mesh, target: str, options: Sequence[tuple[str, Any]] = ()) -> None:
        self.router = _Router(mesh, target)
        self.subchannels = _SubChannels(options, grpc.insecure_channel)
        self._target = target
        self._options = tuple(options)
        self._passthrough: grpc.Channel | None = None

    def passthrough(self) -> grpc.Channel:
        """A plain channel to the target itself, for non-mesh hosts (ALLOW_ANY)."""
        if self._passthrough is None:
            self._passthrough = grpc.insecure_channel(self.router.authority, options=self._options)
        return self._passthrough

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _UnaryUnary(self, "unary_unary", method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _UnaryStream(self, "unary_stream", method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _StreamUnary(self, "stream_unary", method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _StreamStream(
            self, "stream_stream", method, request_serializer, response_deserializer
        )

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        """Connectivity of a meshed channel is per endpoint; nothing to report."""

    def unsubscribe(self, callback: Any) -> None:
        """See subscribe()."""

    def close(self) -> None:
        for channel in self.subchannels.all():
            channel.close()
        if self._passthrough is not None:
            self._passthrough.close()

    def __enter__(self) -> MeshChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        flow = exchange.flow
        reply: AttemptResult | None = None
        last: Any = None
        try:
            while True:
                try:
                    command = flow.send(reply)
                except StopIteration as stop:
                    return exchange.conclude(stop.value, last)
                last = None
                if isinstance(command, Send):
                    multi, md = exchange.prepare(command)
                    message = replay.aview() if replay is not None else request
                    try:
                        last = await multi(message, timeout=command.timeout, metadata=md, **kw)
                    except asyncio.CancelledError:
                        exchange.ended(command, _SC.CANCELLED, None)  # the caller gave up
                        raise
                    except grpc.RpcError as exc:
                        last = exc
                        reply = exchange.ended(command, exc.code(), exc.details())
                    else:
                        reply = exchange.ended(command, _SC.OK, None)
                elif isinstance(command, Sleep):
                    await asyncio.sleep(command.seconds)
                    reply = None
                else:
                    await command.ticket.wait_async(command.timeout)
                    reply = None
        finally:
            flow.close()


class _AioUnaryUnary(_AioCallable, grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[misc,type-arg]
    pass


class _AioUnaryStream(_AioCallable, grpc.aio.UnaryStreamMultiCallable):  # type: ignore[misc,type-arg]
    pass


class _AioStreamUnary(_AioCallable, grpc.aio.StreamUnaryMultiCallable):  # type: ignore[misc,type-arg]
    pass


class _AioStreamStream(_AioCallable, grpc.aio.StreamStreamMultiCallable):  # type: ignore[misc,type-arg]
    pass


class AioMeshChannel(grpc.aio.Channel):  # type: ignore[misc]
    """A grpc.aio.Channel whose calls the mesh routes: `mesh.aio_grpc_channel(target)`."""

    def __init__(self, mesh: Mesh, target: str, options: Sequence[tuple[str, Any]] = ()) -> None:
        self.router = _Router(mesh, target)
        self.subchannels = _SubChannels(options, grpc.aio.insecure_channel)
        self._options = tuple(options)
        self._passthrough: grpc.aio.Channel | None = None

    def passthrough(self) -> grpc.aio.Channel:
        if self._passthrough is None:
            self._passthrough = grpc.aio.insecure_channel(
                self.router.authority, options=self._options
            )
        return self._passthrough

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _AioUnaryUnary(
            self, "unary_unary", method, request_serializer, response_deserializer
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _AioUnaryStream(
            self, "unary_stream", method, request_serializer, response_deserializer
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _AioStreamUnary(
            self, "stream_unary", method, request_serializer, response_deserializer
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _AioStreamStream(
            self, "stream_stream", method, request_serializer, response_deserializer
        )

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

    async def __aenter__(self) -> AioMeshChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
