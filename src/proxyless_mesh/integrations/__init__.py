"""Adapters between the mesh core and client/server libraries (httpx, grpcio,
ASGI, WSGI): the transports and channels, the authorization and telemetry
middleware and interceptors. `url_parts` is the httpx transport's reading of
a URL (authority, path), shared with `meshctl simulate` so both route alike.

The server helpers are public modules not imported here, because they need
optional extras: `integrations.serving` (uvicorn, grpcio servers) and
`integrations.wsgi_serving` (gunicorn); `proxyless_mesh.serving` and
`proxyless_mesh.gunicorn` are their faces. They take an `InboundRuntime`."""

from proxyless_mesh.integrations._asgi import AuthorizationMiddleware
from proxyless_mesh.integrations._grpc_aio import AioMeshChannel
from proxyless_mesh.integrations._grpc_client import MeshChannel
from proxyless_mesh.integrations._grpc_exchange import normalize_target
from proxyless_mesh.integrations._grpc_security import native_channel
from proxyless_mesh.integrations._grpc_server import (
    AioAuthorizationServerInterceptor,
    AuthorizationServerInterceptor,
)
from proxyless_mesh.integrations._grpc_server_telemetry import (
    AioTelemetryServerInterceptor,
    TelemetryServerInterceptor,
)
from proxyless_mesh.integrations._http_server_telemetry import (
    TelemetryMiddleware,
    WsgiTelemetryMiddleware,
)
from proxyless_mesh.integrations._httpx import AsyncMeshTransport, MeshTransport
from proxyless_mesh.integrations._httpx_exchange import url_parts
from proxyless_mesh.integrations._peer import peer_identity
from proxyless_mesh.integrations._wsgi import WsgiAuthorizationMiddleware

__all__ = [
    "AioAuthorizationServerInterceptor",
    "AioMeshChannel",
    "AioTelemetryServerInterceptor",
    "AsyncMeshTransport",
    "AuthorizationMiddleware",
    "AuthorizationServerInterceptor",
    "MeshChannel",
    "MeshTransport",
    "TelemetryMiddleware",
    "TelemetryServerInterceptor",
    "WsgiAuthorizationMiddleware",
    "WsgiTelemetryMiddleware",
    "native_channel",
    "normalize_target",
    "peer_identity",
    "url_parts",
]
