"""Inbound gRPC telemetry (destination reporter): server interceptors.

Put the telemetry interceptor first in `interceptors=[...]` so it wraps the
authorization interceptor and refused RPCs are recorded. Message sizes are
counted through the handler's (de)serializers, the status is the servicer
context's code when the handler returns (OK unless set), or the code it
aborted with (UNKNOWN for an uncaught exception). A unary response is
recorded once serialized (before it is sent), a streaming response when its
last message was produced.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from opentelemetry import context as otel_context

from proxyless_mesh.integrations._dry_run import reporting_to
from proxyless_mesh.integrations._grpc_server import (
    PeerPrincipal,
    _AioInterceptor,
    _kind,
    _rebuild,
    _SyncInterceptor,
    auth_context_peer_principal,
)
from proxyless_mesh.integrations._http_server_telemetry import log_extra
from proxyless_mesh.telemetry import NO_PEER, Call, Telemetry, hook_failed

if TYPE_CHECKING:
    from proxyless_mesh.integrations._grpc_server import AioContinuation, SyncContinuation

_STREAMING = ("unary_stream", "stream_stream")


class _Recorder:
    """Shared by the sync and aio interceptors: one Call per RPC."""

    def __init__(
        self, telemetry: Telemetry, service: str | None, peer_principal: PeerPrincipal
    ) -> None:
        self.telemetry = telemetry
        self.service = service
        self.peer_principal = peer_principal

    def begin(
        self, details: grpc.HandlerCallDetails, handler: grpc.RpcMethodHandler[Any, Any] | None
    ) -> tuple[Call, _Counting, str, Any] | None:
        """None when nothing is recorded: no handler (unknown method) or telemetry off."""
        if handler is None:
            return None
        call = self.telemetry.call("destination", "grpc", "POST", "", details.method)
        if call is None:
            return None
        metadata = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        call.authority = metadata.get(":authority", "")
        if self.service:
            call.service = self.service
        call.http_version = "HTTP/2"
        kind, inner = _kind(handler)
        return call, _Counting(call, handler), kind, (inner, metadata)

    def start(self, call: Call, metadata: dict[str, str], context: Any) -> Any:
        """Peer identity, then the server span; returns a context token."""
        try:
            principal = self.peer_principal(context)
            if principal:
                call.peer_principal = principal
                call.secure = True
            if call.logged:
                peer = context.peer() if hasattr(context, "peer") else ""
                remote = peer.partition(":")[2] if isinstance(peer, str) else ""
                call.log_extra = log_extra(metadata.get, remote or None, None)
        except Exception as exc:  # telemetry never breaks a request
            hook_failed(self.telemetry, exc)
        ctx = call.start_server_span(metadata.get)
        return otel_context.attach(ctx) if ctx is not None else None

    @staticmethod
    def end(call: Call, context: Any, exc: BaseException | None, token: Any = None) -> None:
        """Record the outcome; `token` (start's) is detached first, so the
        wrappers need no `finally` of their own."""
        if token is not None:
            otel_context.detach(token)
        answer_peer(call, context)
        code: Any = None
        try:
            code = context.code()
        except (AttributeError, TypeError):
            code = None
        if code is None:
            code = grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN
        status = code.value[0] if isinstance(code, grpc.StatusCode) else int(code)
        call.finish(200, grpc_status=status, error=None if status == 0 else code.name)


def answer_peer(call: Call, context: Any) -> None:
    """Name this workload to a meshed caller that named itself (Istio's
    exchange), in the trailers: the response headers may already be gone
    and belong to the application. Only to a caller that sent its own."""
    telemetry = call.telemetry
    if call.peer_workload is NO_PEER or not telemetry.exchange_peers:
        return
    try:
        existing = tuple(context.trailing_metadata() or ())
        context.set_trailing_metadata((*existing, *telemetry.grpc_peer_headers))
    except (AttributeError, TypeError, ValueError, RuntimeError) as exc:  # a context double
        hook_failed(telemetry, exc)


class _Counting:
    """The counting (de)serializers, shaped like the handler fields _rebuild reads.

    A unary response is serialized after the handler returned: the call is
    recorded then (`answered`), with its size, still before it is sent;
    `after_response` is the fallback when nothing is serialized."""

    def __init__(self, call: Call, handler: grpc.RpcMethodHandler[Any, Any]) -> None:
        self.call = call
        self._deserializer = handler.request_deserializer
        self._serializer = handler.response_serializer
        self.answered: Any = None  # the servicer context, once a unary handler returned

    def request_deserializer(self, data: bytes) -> Any:
        self.call.request_bytes += len(data)
        self.call.request_messages += 1
        return self._deserializer(data) if self._deserializer is not None else data

    def response_serializer(self, message: Any) -> bytes:
        data: bytes = self._serializer(message) if self._serializer is not None else message
        self.call.response_bytes += len(data)
        self.call.response_messages += 1
        if self.answered is not None:
            _Recorder.end(self.call, self.answered, None)
        return data

    def after_response(self, context: Any, token: Any, aio: bool) -> None:
        """Record the unary response when serialized, or when the RPC ends
        without one (a context without callbacks: now); start's `token` is
        detached now, in the handler's context."""
        if token is not None:
            otel_context.detach(token)
        self.answered = context
        try:
            if aio:
                context.add_done_callback(lambda _: _Recorder.end(self.call, context, None))
            else:
                context.add_callback(lambda: _Recorder.end(self.call, context, None))
        except AttributeError:  # a context double: no termination callbacks
            _Recorder.end(self.call, context, None)


class _TelemetrySetup:
    """The construction the sync and aio interceptors share (calls never pass here)."""

    def __init__(
        self,
        *,
        telemetry: Telemetry,
        service: str | None = None,
        peer_principal: PeerPrincipal = auth_context_peer_principal,
    ) -> None:
        self._recorder = _Recorder(telemetry, service, peer_principal)


class TelemetryServerInterceptor(_TelemetrySetup, _SyncInterceptor):
    """Sync grpc server interceptor recording every RPC."""

    def intercept_service(
        self, continuation: SyncContinuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        recorder = self._recorder
        if (begun := recorder.begin(handler_call_details, handler)) is None:
            return handler
        call, counting, kind, (inner, metadata) = begun

        def behavior(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
            token = recorder.start(call, metadata, context)
            try:
                with reporting_to(recorder.telemetry, call):  # the check runs in this call
                    result = inner(request_or_iterator, context)
            except BaseException as exc:
                recorder.end(call, context, exc, token)
                raise
            if kind in _STREAMING:  # recorded when the stream ends, off this context
                if token is not None:
                    otel_context.detach(token)
                return _stream(result, call, context)
            counting.after_response(context, token, aio=False)
            return result

        return _rebuild(counting, kind, behavior)  # type: ignore[arg-type]


def _stream(result: Iterator[Any], call: Call, context: Any) -> Iterator[Any]:
    try:
        yield from result
    except BaseException as exc:
        _Recorder.end(call, context, exc)
        raise
    _Recorder.end(call, context, None)


class AioTelemetryServerInterceptor(_TelemetrySetup, _AioInterceptor):
    """grpc.aio server interceptor recording every RPC."""

    async def intercept_service(
        self, continuation: AioContinuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        recorder = self._recorder
        if (begun := recorder.begin(handler_call_details, handler)) is None:
            return handler
        call, counting, kind, (inner, metadata) = begun

        if kind not in _STREAMING:

            async def unary_response(request_or_iterator: Any, context: Any) -> Any:
                token = recorder.start(call, metadata, context)
                try:
                    with reporting_to(recorder.telemetry, call):
                        result = inner(request_or_iterator, context)
                        if inspect.isawaitable(result):
                            result = await result
                except BaseException as exc:
                    recorder.end(call, context, exc, token)
                    raise
                counting.after_response(context, token, aio=True)
                return result

            return _rebuild(counting, kind, unary_response)  # type: ignore[arg-type]

        async def streaming_response(request_or_iterator: Any, context: Any) -> AsyncIterator[Any]:
            token = recorder.start(call, metadata, context)
            try:
                with reporting_to(recorder.telemetry, call):  # the check runs on first item
                    result = inner(request_or_iterator, context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    elif inspect.isawaitable(result):
                        await result
                    else:
                        for item in result:
                            yield item
            except BaseException as exc:
                recorder.end(call, context, exc, token)
                raise
            recorder.end(call, context, None, token)

        return _rebuild(counting, kind, streaming_response)  # type: ignore[arg-type]
