"""Transport security of mesh gRPC channels, decided when a channel is made.

Native mode (`native=True`): grpcio's own xDS client reads the cluster's
UpstreamTlsContext and verifies the server's SPIFFE ID itself, but only on a
channel made with `xds_channel_credentials` (an insecure channel ignores the
TLS config), and only when its bootstrap names the `certificate_providers`
the cluster refers to. So a mesh with an identity gets xDS credentials
(plaintext fallback for clusters without TLS), and a bootstrap without
providers is refused here by name rather than by grpcio's "unrecognized
certificate provider instance name" on the first call.

Library mode cannot verify a SPIFFE ID: grpcio's `ssl_channel_credentials`
check the server name against DNS/IP SANs only (even
`grpc.ssl_target_name_override` set to the SPIFFE URI fails hostname
verification), and mesh certificates carry a URI SAN alone. Rather than send
plaintext that a STRICT server closes as `Socket closed`, a library-mode
channel refuses a service whose clusters require mTLS: at creation when the
mesh already knows the service (`LibraryModeMtlsError`), else at the call
that routes to such a cluster (`MeshRpcError` UNAVAILABLE, flag UF).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import grpc.experimental

from proxyless_mesh.errors import LibraryModeMtlsError, MeshError, MeshRpcError
from proxyless_mesh.errors import library_mode_mtls_message as _message
from proxyless_mesh.integrations._grpc_exchange import Metadata, _Router
from proxyless_mesh.routing import RouteDecision
from proxyless_mesh.telemetry import Call

if TYPE_CHECKING:
    from proxyless_mesh.mesh import Mesh

__all__ = ["SecureRouter", "native_channel", "refuse_mtls_clusters"]


def native_channel(
    mesh: Mesh, xds_target: str, options: Sequence[tuple[str, Any]], *, aio: bool = False
) -> Any:
    """grpcio's `xds:///` channel: with xDS credentials when the mesh has an
    identity (mTLS where the cluster says so), insecure otherwise."""
    module: Any = grpc.aio if aio else grpc
    if not mesh.mtls:
        return module.insecure_channel(xds_target, options=options)
    if not mesh.bootstrap.certificate_providers:
        raise MeshError(
            "native mTLS needs the bootstrap's 'certificate_providers' (grpcio reads the "
            "workload certificate from files): write the bootstrap with `meshctl bootstrap "
            "--ca-address ...` (it names a credentials directory by default) or pass "
            "--credentials-dir DIR"
        )
    fallback = grpc.experimental.insecure_channel_credentials()  # type: ignore[no-untyped-call]
    credentials = grpc.xds_channel_credentials(fallback)
    return module.secure_channel(xds_target, credentials, options=options)


def _mtls_cluster(mesh: Mesh, cluster: str) -> bool:
    source = mesh.snapshot.sources.get(cluster)
    return source is not None and source.cluster is not None and source.cluster.tls is not None


def refuse_mtls_clusters(mesh: Mesh, authority: str) -> None:
    """LibraryModeMtlsError when the mesh already knows that a route of
    `authority` leads to a cluster requiring mTLS."""
    table = mesh.snapshot.routes.get(authority)
    if table is None:
        return
    for route in table.routes:
        for cluster, _weight in route.clusters:
            if _mtls_cluster(mesh, cluster):
                raise LibraryModeMtlsError(authority, cluster)


class SecureRouter(_Router):
    """The library-mode router, refusing each call routed to an mTLS cluster
    (the service's config may change after the channel was made)."""

    def route(self, method: str, metadata: Metadata, call: Call | None) -> Any:
        decision = super().route(method, metadata, call)
        if isinstance(decision, RouteDecision) and _mtls_cluster(self.mesh, decision.cluster):
            raise MeshRpcError(
                grpc.StatusCode.UNAVAILABLE, _message(self.authority, decision.cluster), "UF"
            )
        return decision
