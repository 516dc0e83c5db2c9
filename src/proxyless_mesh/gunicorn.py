"""WSGI apps under gunicorn with mesh mutual TLS and authorization:

    GRPC_XDS_BOOTSTRAP=bootstrap.json gunicorn -k proxyless_mesh.gunicorn.MeshSyncWorker app:app

Each worker starts its own Mesh after the fork; a connection is served per its
port's PeerAuthentication mode, the verified SPIFFE ID is in
`environ["proxyless_mesh.peer_principal"]`, and the port's AuthorizationPolicy
is enforced. The worker announces its port as "http" (`MeshSyncWorker.port_name`;
subclass to change) for a `Registration` that leaves its ports to the servers.
Needs gunicorn (`pip install proxyless-mesh[gunicorn]`).
"""

from proxyless_mesh.integrations.wsgi_serving import InboundSyncWorker, accept_mesh_connection
from proxyless_mesh.mesh import Mesh

__all__ = ["MeshSyncWorker", "accept_mesh_connection"]


class MeshSyncWorker(InboundSyncWorker):  # type: ignore[misc]  # gunicorn is untyped
    """The sync worker whose runtime is a `Mesh` from the bootstrap, started
    in each worker after the fork."""

    def open_runtime(self) -> Mesh:
        return Mesh.from_bootstrap()
