"""Adapters between the mesh core and client/server libraries (httpx for now)."""

from proxyless_mesh.integrations._httpx import AsyncMeshTransport, MeshTransport

__all__ = ["AsyncMeshTransport", "MeshTransport"]
