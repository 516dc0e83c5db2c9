"""Adapters between the mesh core and client/server libraries (httpx, grpcio,
ASGI, WSGI): the transports and channels, the authorization and telemetry
middleware and interceptors. `url_parts` is the httpx transport's reading of
a URL (authority, path), shared with `meshctl simulate` so both route alike.

The server helpers are public modules not imported here, because they need
optional extras: `integrations.serving` (uvicorn, grpcio servers) and
`integrations.wsgi_serving` (gunicorn); `proxyless_mesh.serving` and
`proxyless_mesh.gunicorn` are their faces. They take an `InboundRuntime`.

Names load on first use (PEP 562): an httpx-only application never imports
grpcio through this package (issue 25)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxyless_mesh.integrations._asgi import AuthorizationMiddleware
    from proxyless_mesh.integrations._ext_authz import ExtAuthzClient
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
    from proxyless_mesh.integrations._httpx_urls import url_parts
    from proxyless_mesh.integrations._peer import peer_identity
    from proxyless_mesh.integrations._wsgi import WsgiAuthorizationMiddleware

_PUBLIC: dict[str, str] = {
    "AioAuthorizationServerInterceptor": "proxyless_mesh.integrations._grpc_server",
    "AioMeshChannel": "proxyless_mesh.integrations._grpc_aio",
    "AioTelemetryServerInterceptor": "proxyless_mesh.integrations._grpc_server_telemetry",
    "AsyncMeshTransport": "proxyless_mesh.integrations._httpx",
    "AuthorizationMiddleware": "proxyless_mesh.integrations._asgi",
    "AuthorizationServerInterceptor": "proxyless_mesh.integrations._grpc_server",
    "ExtAuthzClient": "proxyless_mesh.integrations._ext_authz",
    "MeshChannel": "proxyless_mesh.integrations._grpc_client",
    "MeshTransport": "proxyless_mesh.integrations._httpx",
    "TelemetryMiddleware": "proxyless_mesh.integrations._http_server_telemetry",
    "TelemetryServerInterceptor": "proxyless_mesh.integrations._grpc_server_telemetry",
    "WsgiAuthorizationMiddleware": "proxyless_mesh.integrations._wsgi",
    "WsgiTelemetryMiddleware": "proxyless_mesh.integrations._http_server_telemetry",
    "native_channel": "proxyless_mesh.integrations._grpc_security",
    "normalize_target": "proxyless_mesh.integrations._grpc_exchange",
    "peer_identity": "proxyless_mesh.integrations._peer",
    "url_parts": "proxyless_mesh.integrations._httpx_urls",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


__all__ = [
    "AioAuthorizationServerInterceptor",
    "AioMeshChannel",
    "AioTelemetryServerInterceptor",
    "AsyncMeshTransport",
    "AuthorizationMiddleware",
    "AuthorizationServerInterceptor",
    "ExtAuthzClient",
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
