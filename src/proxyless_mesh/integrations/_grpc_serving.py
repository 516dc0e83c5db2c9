"""Serving gRPC with mesh mTLS (grpcio).

`grpc_server_credentials(mesh)` are rotating server credentials
(`grpc.dynamic_ssl_server_credentials`: grpcio asks the fetch function at
each new handshake, which returns a new certificate config only after a
rotation), client certificates required and verified against the mesh
roots; `add_mesh_port(server, address, mesh)` adds a port by mode. grpcio
cannot serve TLS and plaintext on one port, so PERMISSIVE is refused there.
`add_mesh_port` announces the bound port as `port_name` (default "grpc"):
grpcio listens from add_port on, so callers connecting before
`server.start()` wait in the backlog rather than fail; start the server
right after, or pass port_name=None and announce after start yourself.
The handler reads the peer with `grpc_peer_identity(context)` (grpc's auth
context carries the verified leaf as PEM).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from proxyless_mesh.errors import MeshError
from proxyless_mesh.integrations._grpc_server import auth_context_peer_principal
from proxyless_mesh.model import TlsMode
from proxyless_mesh.security import Credentials

if TYPE_CHECKING:
    from proxyless_mesh.runtime import InboundRuntime

__all__ = ["ModeArg", "add_mesh_port", "grpc_peer_identity", "grpc_server_credentials"]

ModeArg = TlsMode | str | None
"""A fixed PeerAuthentication mode (TlsMode or its name), or None: the mesh's."""


def _certificate_configuration(credentials: Credentials) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(credentials.private_key_pem(), credentials.chain_pem.encode())],
        root_certificates=credentials.roots_pem.encode(),
    )


def grpc_server_credentials(
    source: InboundRuntime | Callable[[], Credentials],
) -> grpc.ServerCredentials:
    """Rotating mTLS server credentials from a mesh (or a credentials source)."""
    current: Callable[[], Credentials] = source.credentials if not callable(source) else source
    served = [current()]

    def fetch() -> Any:
        # Called by grpcio on its own threads at each handshake: cheap unless
        # the credentials object changed (one identity comparison).
        now = current()
        if now is served[0]:
            return None
        served[0] = now
        return _certificate_configuration(now)

    return grpc.dynamic_ssl_server_credentials(
        _certificate_configuration(served[0]), fetch, require_client_authentication=True
    )


def add_mesh_port(
    server: Any,
    address: str,
    mesh: InboundRuntime,
    *,
    mode: ModeArg = None,
    port_name: str | None = "grpc",
) -> int:
    """Add `address` to a grpc (or grpc.aio) server: mTLS (STRICT; the
    default with an identity) or plaintext (DISABLE; the default without).
    Returns the bound port, announced as `port_name` (None: not announced;
    see the module docstring: start the server right after)."""
    port = _add_port(server, address, mesh, mode)
    if port_name is not None and port:
        mesh.announce_port(port_name, port)
    return port


def _add_port(server: Any, address: str, mesh: InboundRuntime, mode: ModeArg) -> int:
    fixed = TlsMode(mode) if mode is not None else None
    if fixed is None:
        fixed = TlsMode.STRICT if mesh.mtls else TlsMode.DISABLE
    if fixed is TlsMode.PERMISSIVE:
        raise MeshError(
            "grpcio cannot serve mTLS and plaintext on one port: serve STRICT (or DISABLE) "
            "here, or use grpc.server(xds=True), whose xDS credentials follow the control "
            "plane's PeerAuthentication"
        )
    if fixed is TlsMode.DISABLE:
        port: int = server.add_insecure_port(address)
        return port
    if not mesh.mtls:
        raise MeshError("STRICT needs a workload identity, and this mesh has none")
    port = server.add_secure_port(address, grpc_server_credentials(mesh))
    return port


def grpc_peer_identity(context: Any) -> str | None:
    """The verified SPIFFE ID of the caller of an RPC (None over plaintext)."""
    return auth_context_peer_principal(context)
