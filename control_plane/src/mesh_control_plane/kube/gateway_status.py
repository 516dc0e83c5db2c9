"""The Gateway API's own status shape for an accepted Gateway or route
(config/gateway_api_status.py's conditions), written by the replica holding
the Lease (kube/config_source.py): a Gateway's `status.conditions` (Accepted,
Programmed) and `status.listeners[]` (supportedKinds, attachedRoutes,
ResolvedRefs, False with InvalidRouteKinds for a kind it cannot serve, and the
Gateway's Programmed per listener), a route's `status.parents[]` (parentRef, controllerName, and
Accepted and ResolvedRefs per parent).

Programmed comes from the ACKs of the gateway Envoys connected to the Lease
holder (xds/gateway_acks.py); an Envoy connected to another replica is not
seen by it, so with several replicas a Gateway may read NoResources while
served (`meshctl gateway status --admin-address` asks one replica).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mesh_control_plane.config.gateway_api_attach import attached_routes
from mesh_control_plane.config.gateway_api_refs import GROUP, ROUTE_KINDS
from mesh_control_plane.config.gateway_api_status import (
    Programmed,
    conditions,
    listener_resolved_refs,
)
from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.config.parse_gateway import ParentRef

CONTROLLER = "proxyless-mesh.io/gateway-controller"
_MESSAGES = {
    "Accepted": "accepted by the proxyless-mesh control plane",
    "ResolvedRefs": "every backendRef resolves",
    "NoMatchingParent": "no such parent Gateway",
}


def gateway_api_status(
    obj: Mapping[str, Any],
    config: MeshConfig,
    generation: int,
    now: str,
    programmed: Mapping[str, Programmed],
) -> dict[str, Any] | None:
    """The `status` of an accepted Gateway API Gateway or route; None for
    another kind (its Accepted condition is written as for Istio's kinds).
    `programmed`: the verdict of each Gateway with a connected Envoy."""
    if not str(obj.get("apiVersion", "")).startswith(f"{GROUP}/"):
        return None
    meta = obj["metadata"]
    resource = f"{obj['kind']} {meta['namespace']}/{meta['name']}"
    found = [c for c in conditions(config, programmed) if c.resource == resource]

    def condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
        return {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message or _MESSAGES.get(reason, reason),
            "observedGeneration": generation,
            "lastTransitionTime": now,
        }

    if obj["kind"] == "Gateway":
        gateway = next(g for g in config.gateways if g.ref == f"{meta['namespace']}/{meta['name']}")
        (verdict,) = [c for c in found if c.type == "Programmed"]
        listeners = [
            {
                "name": server.name,
                "supportedKinds": [{"group": GROUP, "kind": k} for k in server.route_kinds or ()],
                "attachedRoutes": attached_routes(gateway, server, config.virtual_services),
                "conditions": [
                    condition("Accepted", "True", "Accepted"),
                    condition("ResolvedRefs", *listener_resolved_refs(server)),
                    condition("Programmed", verdict.status, verdict.reason, verdict.message),
                ],
            }
            for server in gateway.servers
        ]
        return {
            "conditions": [condition(c.type, c.status, c.reason, c.message) for c in found],
            "listeners": listeners,
        }
    if obj["kind"] not in ROUTE_KINDS:
        return None
    warnings = [w for w in config.warnings if w.resource == resource]
    parents = []
    for ref in (obj.get("spec") or {}).get("parentRefs") or []:
        kind = ref.get("kind", "Gateway")
        namespace = ref.get("namespace", meta["namespace"])
        gateway_ref = ParentRef(
            f"{namespace}/{ref.get('name', '')}", ref.get("sectionName", ""), ref.get("port")
        )
        key = "mesh" if kind == "Service" else str(gateway_ref)
        mine = [c for c in found if c.parent == key]
        parent_ref = {
            "group": ref.get("group", "" if kind == "Service" else GROUP),
            "kind": kind,
            "name": ref.get("name", ""),
            "namespace": namespace,
            **{k: ref[k] for k in ("sectionName", "port") if k in ref},
        }
        listed = []
        for c in mine:
            message = c.message
            if c.type == "ResolvedRefs" and c.status == "False":
                message = "; ".join(f"{w.field}: {w.message}" for w in warnings)
            listed.append(condition(c.type, c.status, c.reason, message))
        parents.append(
            {"parentRef": parent_ref, "controllerName": CONTROLLER, "conditions": listed}
        )
    return {"parents": parents, "conditions": None}  # None: remove a former verdict's list
