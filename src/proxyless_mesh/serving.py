"""Serving with the mesh: mutual TLS (STRICT / PERMISSIVE / DISABLE from the
workload's PeerAuthentication), the peer's verified identity for the app, and
AuthorizationPolicy enforced from xDS.

ASGI under uvicorn (`pip install proxyless-mesh[serve]`):

    async with Mesh.from_bootstrap() as mesh:
        await serve_asgi(app, mesh, host="0.0.0.0", port=9080)

gRPC servers: `add_mesh_port(server, "0.0.0.0:50051", mesh)` (rotating
credentials; the peer's SPIFFE ID via `grpc_peer_identity(context)`).
WSGI under gunicorn: see `proxyless_mesh.gunicorn`.

Port 0: each helper announces the port it bound (`mesh.announce_port`, as
"http" for serve_asgi and the gunicorn worker, "grpc" for add_mesh_port;
`port_name=` changes it), so `Registration(group=..., ports=None)` or
`ports={"http": 0}` registers the real port once the server answers.

A module of its own because it needs uvicorn, which the library itself does
not depend on. The helpers take any `InboundRuntime` (`proxyless_mesh.runtime`),
which `Mesh` implements.
"""

# The same names as integrations.serving (this is the path users import).
from proxyless_mesh.integrations.serving import *  # noqa: F403
from proxyless_mesh.integrations.serving import __all__ as __all__
