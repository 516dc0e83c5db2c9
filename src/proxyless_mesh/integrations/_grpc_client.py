"""gRPC client channels in library mode: the mesh picks the endpoint per call.

`MeshChannel` (sync) and `AioMeshChannel` (asyncio) look like grpcio
channels to stubs. Each call is routed like an HTTP request — the authority
is the channel's target, the path is the method (`/pkg.Service/Method`), the
method is POST and the headers are the call's metadata — then sent over a
plain grpcio sub-channel to the chosen endpoint. Sub-channels are kept per
endpoint and reused.

Failures the mesh produces are `MeshRpcError`s (a `grpc.RpcError` and a
`grpc.Call`) with gRPC's status for them: UNAVAILABLE for no route, no
endpoint or an unknown service (as grpcio's own xDS client answers),
DEADLINE_EXCEEDED when the route timeout passed. The Envoy response flag is
in the trailing metadata under `x-mesh-response-flags`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from proxyless_mesh._outbound import UNRESOLVED, pick_endpoint, route_request
from proxyless_mesh.errors import MeshRequestError, MeshRpcError
from proxyless_mesh.model import Endpoint
from proxyless_mesh.routing import RouteDecision
from proxyless_mesh.telemetry import Call
from proxyless_mesh.telemetry import _grpc_client as telemetry_hooks

if TYPE_CHECKING:
    from proxyless_mesh.mesh import Mesh

Metadata = Sequence[tuple[str, str | bytes]] | None

_STATUS_FOR_FLAG = {"UT": grpc.StatusCode.DEADLINE_EXCEEDED}


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
    """Shared by sync and async channels: route one call to an endpoint."""

    def __init__(self, mesh: Mesh, target: str) -> None:
        self.mesh = mesh
        self.authority = normalize_target(target)

    def decide(self, method: str, metadata: Metadata, call: Call | None = None) -> Any:
        """(endpoint, route timeout) for a call; (None, None) to pass it
        through; UNRESOLVED when the authority is not known yet."""
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
            if decision is None:
                return None, None
            if not isinstance(decision, RouteDecision):
                return UNRESOLVED
            if call is not None:
                telemetry_hooks.routed(call, snapshot, decision)
            return pick_endpoint(snapshot, self.authority, decision), decision.timeout
        except MeshRequestError as exc:
            raise rpc_error(exc) from exc

    def unresolved(self) -> MeshRpcError:
        return MeshRpcError(
            grpc.StatusCode.UNAVAILABLE,
            f"could not learn whether {self.authority} is a mesh service from the control "
            f"plane ({self.mesh.control_plane}) within {self.mesh.resolve_timeout:g}s [NC]",
            "NC",
        )


def bounded(timeout: float | None, route_timeout: float | None) -> float | None:
    """The call's deadline: the caller's, bounded by the route timeout."""
    if route_timeout is None:
        return timeout
    return route_timeout if timeout is None else min(timeout, route_timeout)


class _SyncCallable:
    def __init__(
        self,
        channel: MeshChannel,
        kind: str,
        method: str,
        serializer: Callable[[Any], bytes] | None,
        deserializer: Callable[[bytes], Any] | None,
    ) -> None:
        self._channel = channel
        self._kind = kind
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer

    def _target(
        self, metadata: Metadata, timeout: float | None, call: Call | None = None
    ) -> tuple[Any, float | None, Metadata]:
        router = self._channel.router
        decided = router.decide(self._method, metadata, call)
        if decided is UNRESOLVED:
            router.mesh.resolve_blocking(router.authority)
            decided = router.decide(self._method, metadata, call)
            if decided is UNRESOLVED:
                raise router.unresolved()
        endpoint, route_timeout = decided
        if endpoint is None:
            sub = self._channel.passthrough()
        else:
            sub = self._channel.subchannels.get(endpoint)
        serializer, deserializer = self._serializer, self._deserializer
        if call is not None:
            serializer, deserializer, metadata = telemetry_hooks.outbound(
                call, endpoint, serializer, deserializer, metadata
            )
        callable_ = getattr(sub, self._kind)(
            self._method,
            request_serializer=serializer,
            response_deserializer=deserializer,
        )
        return callable_, bounded(timeout, route_timeout), metadata

    def _invoke(
        self, how: str, request: Any, timeout: float | None, metadata: Metadata, kw: Any
    ) -> Any:
        router = self._channel.router
        call = telemetry_hooks.client_call(router.mesh.telemetry, router.authority, self._method)
        try:
            callable_, timeout, metadata = self._target(metadata, timeout, call)
            invoke = callable_ if how == "call" else getattr(callable_, how)
            result = invoke(request, timeout=timeout, metadata=metadata, **kw)
        except BaseException as exc:
            if call is not None:
                telemetry_hooks.failed(call, exc)
            raise
        return (
            result if call is None else telemetry_hooks.sync_result(call, self._kind, how, result)
        )

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
    """Returned by an aio call made before the authority was ever resolved:
    awaiting (or iterating) it resolves first, then makes the real call.
    Calls after the first resolution return grpcio's own call objects."""

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


class _AioCallable:
    def __init__(
        self,
        channel: AioMeshChannel,
        kind: str,
        method: str,
        serializer: Callable[[Any], bytes] | None,
        deserializer: Callable[[bytes], Any] | None,
    ) -> None:
        self._channel = channel
        self._kind = kind
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer

    def _call(
        self,
        decided: Any,
        request: Any,
        timeout: float | None,
        metadata: Metadata,
        kw: dict[str, Any],
        call: Call | None = None,
    ) -> Any:
        endpoint, route_timeout = decided
        channel = self._channel
        sub = channel.passthrough() if endpoint is None else channel.subchannels.get(endpoint)
        serializer, deserializer = self._serializer, self._deserializer
        if call is not None:
            serializer, deserializer, metadata = telemetry_hooks.outbound(
                call, endpoint, serializer, deserializer, metadata
            )
        callable_ = getattr(sub, self._kind)(
            self._method,
            request_serializer=serializer,
            response_deserializer=deserializer,
        )
        result = callable_(
            request, timeout=bounded(timeout, route_timeout), metadata=metadata, **kw
        )
        return result if call is None else telemetry_hooks.aio_result(call, result)

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: Metadata = None,
        **kw: Any,
    ) -> Any:
        router = self._channel.router
        call = telemetry_hooks.client_call(router.mesh.telemetry, router.authority, self._method)
        try:
            decided = router.decide(self._method, metadata, call)
            if decided is not UNRESOLVED:
                return self._call(decided, request, timeout, metadata, kw, call)
        except BaseException as exc:
            if call is not None:
                telemetry_hooks.failed(call, exc)
            raise

        async def start() -> Any:
            try:
                await router.mesh.resolve_async(router.authority)
                again = router.decide(self._method, metadata, call)
                if again is UNRESOLVED:
                    raise router.unresolved()
                return self._call(again, request, timeout, metadata, kw, call)
            except BaseException as exc:
                if call is not None:
                    telemetry_hooks.failed(call, exc)
                raise

        return _Deferred(start)


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
