"""The runtime seam: what the integrations need from a running mesh, and nothing more.

The outbound integrations (httpx, grpcio) take a `Runtime` (which `Mesh`
implements), read its current `MeshSnapshot` and make the outbound decision
with `route_request` / `pick_endpoint`; they never import `Mesh` or the xDS
client; the serving helpers take an `InboundRuntime` the same way. This
package sits between them and the
core (routing, balancer, policy), so the request path touches no protobuf.
"""

from proxyless_mesh.runtime._inbound import InboundRuntime, check_port
from proxyless_mesh.runtime._outbound import (
    ALLOW_ANY,
    REGISTRY_ONLY,
    UNRESOLVED,
    is_ip_literal,
    passthrough_failure,
    pick_endpoint,
    route_request,
)
from proxyless_mesh.runtime._seam import BackgroundWork, Runtime
from proxyless_mesh.runtime._snapshot import BalancerSource, InboundPolicy, MeshSnapshot

__all__ = [
    "ALLOW_ANY",
    "REGISTRY_ONLY",
    "UNRESOLVED",
    "BackgroundWork",
    "BalancerSource",
    "InboundPolicy",
    "InboundRuntime",
    "MeshSnapshot",
    "Runtime",
    "check_port",
    "is_ip_literal",
    "passthrough_failure",
    "pick_endpoint",
    "route_request",
]
