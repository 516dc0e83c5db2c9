"""The serving helpers (uvicorn, grpcio) as one public module: what
`proxyless_mesh.serving` offers, taking any `InboundRuntime`. Kept out of
`integrations/__init__` because it imports uvicorn, an optional extra
(`proxyless-mesh[serve]`): `import proxyless_mesh` must work without it.
"""

from proxyless_mesh.integrations._grpc_serving import (
    ModeArg,
    add_mesh_port,
    grpc_peer_identity,
    grpc_server_credentials,
)
from proxyless_mesh.integrations._serve_asgi import authorized_asgi, serve_asgi
from proxyless_mesh.integrations._serving import MeshUvicornConfig, asgi_config, inbound_tls

__all__ = [
    "MeshUvicornConfig",
    "ModeArg",
    "add_mesh_port",
    "asgi_config",
    "authorized_asgi",
    "grpc_peer_identity",
    "grpc_server_credentials",
    "inbound_tls",
    "serve_asgi",
]
