"""Adapters between the mesh core and client/server libraries (httpx, grpcio)."""

from proxyless_mesh.integrations._grpc_client import AioMeshChannel, MeshChannel, normalize_target
from proxyless_mesh.integrations._httpx import AsyncMeshTransport, MeshTransport

__all__ = [
    "AioMeshChannel",
    "AsyncMeshTransport",
    "MeshChannel",
    "MeshTransport",
    "normalize_target",
]
