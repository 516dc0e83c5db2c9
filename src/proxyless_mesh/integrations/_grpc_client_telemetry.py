"""Telemetry glue for library-mode gRPC channels (source reporter).

Library mode sends each call once (no mesh retries), so a call is a CLIENT
span with one CLIENT try span under it (the same shape as an httpx call),
whose context travels in the call's metadata. Message sizes are counted
by wrapping the call's serializer and deserializer; the outcome is the
call's status code when it completes (a done-callback for futures and
streams, so a stream is recorded when it ends, not when it starts).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from proxyless_mesh.errors import MeshRpcError
from proxyless_mesh.telemetry import Call, Telemetry, hook_failed

if TYPE_CHECKING:
    from proxyless_mesh.routing import RouteDecision
    from proxyless_mesh.runtime import MeshSnapshot

Serializer = Callable[[Any], Any] | None
_UNARY_RESPONSE = ("unary_unary", "stream_unary")
_pending: set[asyncio.Task[None]] = set()  # references to in-flight recorders


def client_call(telemetry: Telemetry, authority: str, method: str) -> Call | None:
    return telemetry.call("source", "grpc", "POST", authority, method)


def routed(call: Call, snapshot: MeshSnapshot, decision: RouteDecision) -> None:
    source = snapshot.sources.get(decision.cluster)
    cluster = source.cluster if source is not None else None
    tls = cluster.tls if cluster is not None else None
    principal = ""
    if tls is not None and len(tls.expected_spiffe_ids) == 1:
        principal = tls.expected_spiffe_ids[0]
    call.routed(decision.route_name, decision.cluster, tls is not None, principal)


def outbound(
    call: Call,
    endpoint: Any,
    serializer: Serializer,
    deserializer: Serializer,
    metadata: Sequence[tuple[str, Any]] | None,
) -> tuple[Serializer, Serializer, list[tuple[str, Any]]]:
    """Counting (de)serializers and the metadata with the trace context."""
    out = list(metadata or ())
    if endpoint is None:  # passthrough: not a mesh call
        call.done = True
        return serializer, deserializer, out

    def set_header(name: str, value: str) -> None:
        out.append((name, value))

    call.attempt_start(1, endpoint.address, endpoint.port, set_header, endpoint.workload)
    if call.idle:  # nothing would be recorded: no counting, no done-callback
        call.done = True
        return serializer, deserializer, out

    def serialize(message: Any) -> Any:
        data = serializer(message) if serializer is not None else message
        call.request_bytes += len(data)
        call.request_messages += 1
        return data

    def deserialize(data: bytes) -> Any:
        call.response_bytes += len(data)
        call.response_messages += 1
        return deserializer(data) if deserializer is not None else data

    return serialize, deserialize, out


def peer_from_trailers(call: Call | None, source: Any) -> None:
    """The server's exchange answer, from a finished call's (or an
    RpcError's) trailing metadata, or from the metadata itself."""
    if call is None or call.done:
        return
    try:
        trailers = source.trailing_metadata() if hasattr(source, "trailing_metadata") else source
        found = {k: v for k, v in (trailers or ()) if isinstance(v, str)}
        call.peer_from_response(found.get)
    except (AttributeError, TypeError, ValueError) as exc:  # telemetry never breaks a request
        hook_failed(call.telemetry, exc)


def _finish(call: Call, code: grpc.StatusCode | None, flag: str = "") -> None:
    status = code.value[0] if code is not None else 2
    flags = (flag,) if flag else ()
    error = None if status == 0 else (flag or (code.name if code is not None else "UNKNOWN"))
    call.finish(200, flags, grpc_status=status, error=error)


def failed(call: Call, exc: BaseException) -> None:
    """The call raised (a mesh refusal or the server's status)."""
    if isinstance(exc, MeshRpcError):
        _finish(call, exc.code(), exc.response_flag)
    elif isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        _finish(call, exc.code())
    else:
        call.finish(0, (), error=type(exc).__name__)


def sync_result(call: Call, kind: str, how: str, result: Any) -> Any:
    """Record now (a unary response is in hand) or when the future/stream ends."""
    if call.done:
        return result
    if how != "future" and kind in _UNARY_RESPONSE:
        _finish(call, grpc.StatusCode.OK)
        return result

    def done(future: Any) -> None:
        try:
            peer_from_trailers(call, future)
            _finish(call, future.code())
        except Exception as exc:  # telemetry never breaks a request
            hook_failed(call.telemetry, exc)

    result.add_done_callback(done)
    return result


def aio_result(call: Call, result: Any) -> Any:
    """Record an aio call when it completes (its code() is a coroutine)."""
    if call.done:
        return result

    async def record(finished: Any) -> None:
        try:
            peer_from_trailers(call, await finished.trailing_metadata())
            _finish(call, await finished.code())
        except Exception as exc:  # telemetry never breaks a request
            hook_failed(call.telemetry, exc)

    def done(finished: Any) -> None:
        task = asyncio.get_running_loop().create_task(record(finished))
        _pending.add(task)
        task.add_done_callback(_pending.discard)

    result.add_done_callback(done)
    return result
