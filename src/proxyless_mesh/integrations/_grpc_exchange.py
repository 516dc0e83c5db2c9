"""Shared by the sync and async gRPC library-mode channels: routing a call,
sub-channels per endpoint, and one call's trip through the resilience engine
(`_Exchange`), with client-stream replay for retries. See `_grpc_client` for
the behaviour as a whole."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from proxyless_mesh.balancer import Outcome, hash_key
from proxyless_mesh.errors import MeshRequestError, MeshRpcError
from proxyless_mesh.integrations import _grpc_client_telemetry as telemetry_hooks
from proxyless_mesh.model import Endpoint
from proxyless_mesh.resilience import AttemptResult, FailureKind, Finish, Send, request_flow
from proxyless_mesh.routing import RouteDecision
from proxyless_mesh.runtime import UNRESOLVED, pick_endpoint, route_request
from proxyless_mesh.telemetry import Call

if TYPE_CHECKING:
    from proxyless_mesh.integrations._grpc_client import _Callable
    from proxyless_mesh.runtime import Runtime

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


class _Router:
    """Shared by sync and async channels: route one call."""

    def __init__(self, mesh: Runtime, target: str) -> None:
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
                source_ip=mesh.node_id,
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
            clock=mesh.clock,
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

                def add(name: str, value: str) -> None:
                    metadata.append((name, value))

                call.attempt_start(
                    send.attempt, endpoint.address, endpoint.port, add, endpoint.workload
                )
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
