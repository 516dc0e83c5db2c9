"""Inbound authorization as grpc server interceptors (sync and aio).

The RPC is judged as the HTTP/2 request it is: method POST, path
`/pkg.Service/Method`, headers from the invocation metadata. The check needs
the servicer context (peer address, auth context), which `intercept_service`
does not get, so the interceptor returns a handler of the same kind that
checks first and then calls the real one; refusals abort with
PERMISSION_DENIED / UNAUTHENTICATED / INTERNAL (a malformed request: what
Envoy's local 400 becomes for a gRPC caller) and a short message.

grpc's Python server does not expose `:authority` to interceptors: policies
on hosts do not match gRPC requests here. An allowed call whose `:path` is
not already in normal form is refused (the handler is picked by the raw
path). The token header is not removed from what the handler sees (gRPC
metadata is read-only to interceptors).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from proxyless_mesh.integrations._dry_run import record_dry_run
from proxyless_mesh.integrations._ext_authz import ExtAuthzClient
from proxyless_mesh.policy import (
    AuthzVerdict,
    Decision,
    InboundRequest,
    PolicySet,
    after_verdict,
    join_headers,
    spiffe_id_from_names,
    spiffe_id_from_pem,
)

_CODES = {
    # Envoy answers a malformed gRPC request with a local 400, which it turns
    # into grpc-status by gRPC's HTTP mapping (httpToGrpcStatus): INTERNAL.
    400: (grpc.StatusCode.INTERNAL, "Bad Request"),
    401: (grpc.StatusCode.UNAUTHENTICATED, "Jwt verification fails"),
    403: (grpc.StatusCode.PERMISSION_DENIED, "RBAC: access denied"),
    503: (grpc.StatusCode.UNAVAILABLE, "inbound policy not received yet"),
}
PeerPrincipal = Callable[[Any], "str | None"]
# grpcio dispatches on the :path as sent, and an interceptor cannot change it:
# a call whose path normalization changes (dot segments, escapes, a query)
# would run a handler the policy did not judge, so it is refused as malformed.
_NOT_AS_SENT = _CODES[400]
Refusal = tuple[grpc.StatusCode, str]

if TYPE_CHECKING:  # the stubs make these generic; the runtime classes are not
    _SyncInterceptor = grpc.ServerInterceptor[Any, Any]
    _AioInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    _RpcHandler = grpc.RpcMethodHandler[Any, Any]
    SyncContinuation = Callable[[grpc.HandlerCallDetails], _RpcHandler | None]
    AioContinuation = Callable[[grpc.HandlerCallDetails], Awaitable[_RpcHandler]]
else:
    _SyncInterceptor = grpc.ServerInterceptor
    _AioInterceptor = grpc.aio.ServerInterceptor


def auth_context_peer_principal(context: Any) -> str | None:
    """Default identity source: the verified peer certificate in gRPC's auth
    context (PEM if present, else the SAN list)."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or ()
    for pem in pems:
        return spiffe_id_from_pem(pem)
    return spiffe_id_from_names(auth.get("x509_subject_alternative_name") or ())


def _peer_ip(peer: str | None) -> str | None:
    """`ipv4:127.0.0.1:5000` / `ipv6:[::1]:5000` -> the address."""
    if not peer:
        return None
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return None


class _Checker:
    def __init__(
        self,
        policies: Callable[[], PolicySet],
        peer_principal: PeerPrincipal,
        destination_port: int | None,
        ext_authz: ExtAuthzClient | None,
    ) -> None:
        self._policies = policies
        self._peer_principal = peer_principal
        self._port = destination_port
        self._ext_authz = ext_authz or ExtAuthzClient()

    def refusal(self, method: str, metadata: Any, context: Any) -> Refusal | None:
        """What to abort the call with, or None to let it through."""
        policies, request = self._policies(), self._request(method, metadata, context)
        decision = policies.check(request)
        if decision.ext_authz is not None:  # a CUSTOM policy matched: its authorizer first
            verdict = self._ext_authz.check(decision.ext_authz, request, decision)
            if not verdict.allowed:
                return _verdict_refusal(verdict)
            decision = after_verdict(policies, request, verdict)
        return self._outcome(method, decision)

    async def refusal_async(self, method: str, metadata: Any, context: Any) -> Refusal | None:
        """`refusal` for grpc.aio: the authorizer is asked without blocking the loop."""
        policies, request = self._policies(), self._request(method, metadata, context)
        decision = policies.check(request)
        if decision.ext_authz is not None:
            verdict = await self._ext_authz.check_async(decision.ext_authz, request, decision)
            if not verdict.allowed:
                return _verdict_refusal(verdict)
            decision = after_verdict(policies, request, verdict)
        return self._outcome(method, decision)

    def _request(self, method: str, metadata: Any, context: Any) -> InboundRequest:
        pairs = [(k, v) for k, v in (metadata or ()) if isinstance(v, str)]
        return InboundRequest(
            method="POST",
            target=method.encode("utf-8"),
            headers=join_headers(pairs),
            peer_principal=self._peer_principal(context),
            source_ip=_peer_ip(context.peer()),
            destination_port=self._port,
            scheme="https" if (context.auth_context() or {}).get("x509_pem_cert") else "http",
            http_version="2",
        )

    @staticmethod
    def _outcome(method: str, decision: Decision) -> Refusal | None:
        record_dry_run(decision)
        if not decision.allowed:
            return _CODES[decision.status]
        if decision.path != method:
            return _NOT_AS_SENT
        return None


# Envoy's HTTP-to-gRPC status mapping (httpToGrpcStatus) for an authorizer's denial.
_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INTERNAL,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    429: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}


def _verdict_refusal(verdict: AuthzVerdict) -> Refusal:
    code = _HTTP_TO_GRPC.get(verdict.status, grpc.StatusCode.UNKNOWN)
    return code, verdict.body.decode("utf-8", "replace") or "ext_authz: access denied"


def _kind(handler: grpc.RpcMethodHandler[Any, Any]) -> tuple[str, Any]:
    if handler.unary_unary:
        return "unary_unary", handler.unary_unary
    if handler.unary_stream:
        return "unary_stream", handler.unary_stream
    if handler.stream_unary:
        return "stream_unary", handler.stream_unary
    return "stream_stream", handler.stream_stream


_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def _rebuild(
    handler: grpc.RpcMethodHandler[Any, Any], kind: str, behavior: Any
) -> grpc.RpcMethodHandler[Any, Any]:
    factory: Any = _FACTORIES[kind]
    return factory(  # type: ignore[no-any-return]
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _AuthorizationSetup:
    """The construction the sync and aio interceptors share (calls never pass here)."""

    def __init__(
        self,
        *,
        policies: Callable[[], PolicySet],
        peer_principal: PeerPrincipal = auth_context_peer_principal,
        destination_port: int | None = None,
        ext_authz: ExtAuthzClient | None = None,
    ) -> None:
        self._checker = _Checker(policies, peer_principal, destination_port, ext_authz)


class AuthorizationServerInterceptor(_AuthorizationSetup, _SyncInterceptor):
    """Sync grpc server interceptor enforcing the current `PolicySet`."""

    def intercept_service(
        self, continuation: SyncContinuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if (handler := continuation(handler_call_details)) is None:
            return None
        kind, inner = _kind(handler)
        refusal, details = self._checker.refusal, handler_call_details

        def behavior(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
            refused = refusal(details.method, details.invocation_metadata, context)
            if refused is not None:
                context.abort(*refused)
            return inner(request_or_iterator, context)

        return _rebuild(handler, kind, behavior)


class AioAuthorizationServerInterceptor(_AuthorizationSetup, _AioInterceptor):
    """grpc.aio server interceptor enforcing the current `PolicySet`."""

    async def intercept_service(
        self, continuation: AioContinuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if (handler := await continuation(handler_call_details)) is None:
            return None
        kind, inner = _kind(handler)
        refusal, details = self._checker.refusal_async, handler_call_details

        async def guard(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            refused = await refusal(details.method, details.invocation_metadata, context)
            if refused is not None:
                await context.abort(*refused)

        if kind in ("unary_unary", "stream_unary"):

            async def unary_response(request_or_iterator: Any, context: Any) -> Any:
                await guard(context)
                result = inner(request_or_iterator, context)
                return await result if inspect.isawaitable(result) else result

            return _rebuild(handler, kind, unary_response)

        async def streaming_response(request_or_iterator: Any, context: Any) -> AsyncIterator[Any]:
            await guard(context)
            result = inner(request_or_iterator, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            elif inspect.isawaitable(result):
                await result  # the handler wrote its responses with context.write
            else:
                for item in result:
                    yield item

        return _rebuild(handler, kind, streaming_response)
