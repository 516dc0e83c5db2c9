"""What the caller of a simulated request may see: exportTo and its Sidecar.

`simulate --from NS/SA [--label K=V]` translates for a library client in that
namespace with those labels, as the control plane does for a real one, so a
host its Sidecar does not import (or that is not exported to its namespace)
is reported as such rather than routed.
"""

from __future__ import annotations

from collections.abc import Mapping

from mesh_control_plane.admin.mesh_view import mesh_view
from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.config.parse_sidecar import Sidecar, sidecar_for
from mesh_control_plane.registry import Registry
from mesh_control_plane.translate import ClientKind, NodeInfo
from proxyless_mesh.xds_client import XdsState

__all__ = ["caller_sidecar", "caller_state", "hidden_outcome", "outside_outcome"]


def caller_sidecar(config: MeshConfig, namespace: str, labels: Mapping[str, str]) -> Sidecar | None:
    root = config.settings.root_namespace
    return sidecar_for(config.sidecars, namespace, labels, root)


def caller_state(
    config: MeshConfig, registry: Registry, namespace: str, labels: Mapping[str, str]
) -> XdsState:
    """What a library client in `namespace` with `labels` is sent, decoded."""
    node = NodeInfo(
        id="meshctl",
        kind=ClientKind.MESH,
        namespace=namespace,
        labels=tuple(sorted(labels.items())),
    )
    return mesh_view(config, registry, node)


def hidden_outcome(sidecar: Sidecar | None, namespace: str, default: str | None = None) -> str:
    """The outcome of a request to a mesh host the caller may not see."""
    why = (
        f"not imported by {sidecar.meta.ref} ({sidecar.meta.file})"
        if sidecar is not None
        else f"not exported to namespace {namespace!r}"
    )
    return f"{why}: not a mesh service for this caller: {outside_outcome(sidecar, default)}"


def outside_outcome(sidecar: Sidecar | None, default: str | None = None) -> str:
    """What happens to a host outside the caller's mesh: its Sidecar's
    outboundTrafficPolicy when it sets one, else the mesh `default`
    (--outbound-traffic-policy), else the client's own policy."""
    if sidecar is None or sidecar.outbound_policy is None:
        if default is not None:
            verb = "refused" if default == "REGISTRY_ONLY" else "passed through"
            return f"{verb} ({default}, the mesh default)"
        return "passed through (ALLOW_ANY) or refused (REGISTRY_ONLY)"
    if sidecar.outbound_policy == "REGISTRY_ONLY":
        return f"refused (REGISTRY_ONLY, outboundTrafficPolicy of {sidecar.meta.ref})"
    return f"passed through (ALLOW_ANY, outboundTrafficPolicy of {sidecar.meta.ref})"
