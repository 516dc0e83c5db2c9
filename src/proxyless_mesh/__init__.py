"""proxyless-mesh: a service mesh inside the process, configured over xDS.

    from proxyless_mesh import Mesh
    with Mesh.from_bootstrap() as mesh:
        client = httpx.Client(transport=mesh.httpx_transport())

Everything public is re-exported here; modules starting with `_` are private.
"""

from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.errors import (
    BootstrapError,
    ControlPlaneUnavailableError,
    MeshError,
    MeshRequestError,
    MeshRpcError,
    NoHealthyUpstreamError,
    NoRouteError,
    OutsideMeshError,
    ServiceResolutionError,
)
from proxyless_mesh.integrations import (
    AioMeshChannel,
    AsyncMeshTransport,
    MeshChannel,
    MeshTransport,
)
from proxyless_mesh.mesh import Mesh

__all__ = [
    "AioMeshChannel",
    "AsyncMeshTransport",
    "Bootstrap",
    "BootstrapError",
    "ControlPlaneUnavailableError",
    "Mesh",
    "MeshChannel",
    "MeshError",
    "MeshRequestError",
    "MeshRpcError",
    "MeshTransport",
    "NoHealthyUpstreamError",
    "NoRouteError",
    "OutsideMeshError",
    "ServiceResolutionError",
]
