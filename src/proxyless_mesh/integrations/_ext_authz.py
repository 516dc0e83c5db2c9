"""Asking an AuthorizationPolicy CUSTOM provider, sync and async: over HTTP
(Envoy's HTTP ext_authz service shape) or gRPC
(`envoy.service.auth.v3.Authorization/Check`). The protocol itself (what is
sent, what an answer means) is `proxyless_mesh.policy`'s; this module only
does the I/O.

Give it the mesh's transports (`Mesh.httpx_transport()` and friends, which
`serve_asgi` does) so the authorizer is reached as any mesh service is:
routed, balanced and with mTLS when it is meshed. Without them it connects
to the provider's `host:port` directly. Only requests a CUSTOM policy matches
pay for any of this.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx

from proxyless_mesh.model import ExtAuthz
from proxyless_mesh.policy import (
    AuthzVerdict,
    Decision,
    InboundRequest,
    check_headers,
    error_verdict,
    http_check,
    http_verdict,
)

CHECK_METHOD = "/envoy.service.auth.v3.Authorization/Check"
_HTTP_ERRORS = (httpx.HTTPError, OSError)


class ExtAuthzClient:
    """One per server; holds its HTTP clients and gRPC channels."""

    def __init__(
        self,
        *,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        channel: Callable[[str], Any] | None = None,
        aio_channel: Callable[[str], Any] | None = None,
    ) -> None:
        self._transport = transport
        self._async_transport = async_transport
        self._channel = channel
        self._aio_channel = aio_channel
        self._http: httpx.Client | None = None
        self._async_http: httpx.AsyncClient | None = None
        self._channels: dict[str, Any] = {}
        self._lock = threading.Lock()

    def check(self, config: ExtAuthz, request: InboundRequest, decision: Decision) -> AuthzVerdict:
        if config.grpc:
            import grpc  # only servers with a gRPC provider load grpcio (issue 25)

            check = _check_request(config, request, decision)
            try:
                answer = self._stub(config.target, aio=False)(check, timeout=config.timeout)
            except (grpc.RpcError, OSError):
                return error_verdict(config)
            return _grpc_verdict(answer)
        if self._http is None:
            self._http = httpx.Client(transport=self._transport)
        try:
            response = self._http.send(_http_request(config, request, decision))
        except _HTTP_ERRORS:
            return error_verdict(config)
        return _http_answer(config, response)

    async def check_async(
        self, config: ExtAuthz, request: InboundRequest, decision: Decision
    ) -> AuthzVerdict:
        if config.grpc:
            import grpc

            check = _check_request(config, request, decision)
            try:
                answer = await self._stub(config.target, aio=True)(check, timeout=config.timeout)
            except (grpc.RpcError, OSError):
                return error_verdict(config)
            return _grpc_verdict(answer)
        if self._async_http is None:
            self._async_http = httpx.AsyncClient(transport=self._async_transport)
        try:
            response = await self._async_http.send(_http_request(config, request, decision))
        except _HTTP_ERRORS:
            return error_verdict(config)
        return _http_answer(config, response)

    def _stub(self, target: str, *, aio: bool) -> Any:
        import grpc
        import grpc.aio
        from envoy.service.auth.v3 import external_auth_pb2

        key = f"{'aio' if aio else 'sync'}:{target}"
        with self._lock:
            stub = self._channels.get(key)
            if stub is None:
                if aio:
                    channel = (self._aio_channel or grpc.aio.insecure_channel)(target)
                else:
                    channel = (self._channel or grpc.insecure_channel)(target)
                stub = channel.unary_unary(
                    CHECK_METHOD,
                    request_serializer=external_auth_pb2.CheckRequest.SerializeToString,
                    response_deserializer=external_auth_pb2.CheckResponse.FromString,
                )
                self._channels[key] = stub
        return stub


def mesh_ext_authz_client(mesh: object) -> ExtAuthzClient:
    """The authorizer client of a server of `mesh`: through its transports and
    channels when it has them (a `Mesh`), else direct."""
    if not hasattr(mesh, "httpx_transport"):
        return ExtAuthzClient()
    m: Any = mesh
    return ExtAuthzClient(
        transport=m.httpx_transport(),
        async_transport=m.async_httpx_transport(),
        channel=m.grpc_channel,
        aio_channel=m.aio_grpc_channel,
    )


def _http_request(config: ExtAuthz, request: InboundRequest, decision: Decision) -> httpx.Request:
    method, path, headers = http_check(config, request, decision)
    timeout = httpx.Timeout(config.timeout)
    return httpx.Request(
        method,
        f"http://{config.target}{path}",
        headers=headers,
        extensions={"timeout": timeout.as_dict()},
    )


def _http_answer(config: ExtAuthz, response: httpx.Response) -> AuthzVerdict:
    return http_verdict(config, response.status_code, response.headers.items(), response.content)


def _check_request(config: ExtAuthz, request: InboundRequest, decision: Decision) -> Any:
    """The CheckRequest: the attributes Envoy sends, the HTTP request
    (normalized path and query, headers as for the HTTP service), the peer's
    address and SPIFFE ID."""
    from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

    context = attribute_context_pb2.AttributeContext()
    http = context.request.http
    http.method = request.method
    http.path = decision.path + (f"?{decision.query}" if decision.query else "")
    http.query = decision.query
    http.host = request.headers.get(":authority") or request.headers.get("host", "")
    http.scheme = request.scheme
    http.protocol = f"HTTP/{request.http_version}"
    http.headers.update(check_headers(config, request))
    if request.source_ip:
        context.source.address.socket_address.address = request.source_ip
    if request.peer_principal:
        context.source.principal = request.peer_principal
    if request.destination_port:
        context.destination.address.socket_address.port_value = request.destination_port
    return external_auth_pb2.CheckRequest(attributes=context)


def _grpc_verdict(answer: Any) -> AuthzVerdict:
    """OK allows, with every `ok_response` header for the app (Envoy's rule for
    the gRPC service); anything else denies with `denied_response`'s status
    (403 when it has none), headers and body."""
    if answer.status.code == 0:
        headers = tuple((h.header.key.lower(), h.header.value) for h in answer.ok_response.headers)
        return AuthzVerdict(True, 200, upstream_headers=headers)
    denied = answer.denied_response
    headers = tuple((h.header.key.lower(), h.header.value) for h in denied.headers)
    status = denied.status.code or 403
    return AuthzVerdict(False, int(status), client_headers=headers, body=denied.body.encode())
