"""Adapters between the mesh core and client/server libraries (httpx, grpcio,
ASGI, WSGI)."""

from proxyless_mesh.integrations._asgi import AuthorizationMiddleware
from proxyless_mesh.integrations._grpc_aio import AioMeshChannel
from proxyless_mesh.integrations._grpc_client import MeshChannel
from proxyless_mesh.integrations._grpc_exchange import normalize_target
from proxyless_mesh.integrations._grpc_security import native_channel
from proxyless_mesh.integrations._grpc_server import (
    AioAuthorizationServerInterceptor,
    AuthorizationServerInterceptor,
)
from proxyless_mesh.integrations._httpx import AsyncMeshTransport, MeshTransport
from proxyless_mesh.integrations._peer import peer_identity
from proxyless_mesh.integrations._wsgi import WsgiAuthorizationMiddleware

__all__ = [
    "AioAuthorizationServerInterceptor",
    "AioMeshChannel",
    "AsyncMeshTransport",
    "AuthorizationMiddleware",
    "AuthorizationServerInterceptor",
    "MeshChannel",
    "MeshTransport",
    "WsgiAuthorizationMiddleware",
    "native_channel",
    "normalize_target",
    "peer_identity",
]
