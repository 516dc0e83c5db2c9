"""Gateway API status conditions (Accepted, ResolvedRefs, Programmed) of a
loaded configuration: pure, shown by `meshctl gateway status` and written to
the resources by the control plane on Kubernetes (kube/gateway_status.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .gateway_api_refs import ROUTE_KINDS, resolved_refs
from .model import MeshConfig
from .parse_gateway_api import GATEWAY_NAME_LABEL


@dataclass(frozen=True)
class Condition:
    resource: str  # "Kind ns/name"
    parent: str  # "" for a Gateway; the parent ("ns/name" or "mesh") for a route
    type: str
    status: str  # True | False | Unknown
    reason: str

    def __str__(self) -> str:
        where = f" parent {self.parent}" if self.parent else ""
        return f"{self.resource}{where}: {self.type}={self.status} ({self.reason})"


def conditions(config: MeshConfig, programmed: frozenset[str] | None) -> list[Condition]:
    """`programmed`: "ns/name" of the gateways whose Envoy ACKed its listeners
    (None: not known, offline)."""
    found: list[Condition] = []
    gateways = {g.ref for g in config.gateways}
    for gateway in config.gateways:
        if GATEWAY_NAME_LABEL not in gateway.selector:
            continue  # an Istio Gateway: no Gateway API status
        ref = gateway.meta.ref
        found.append(Condition(ref, "", "Accepted", "True", "Accepted"))
        if programmed is None:
            found.append(Condition(ref, "", "Programmed", "Unknown", "Pending"))
        elif gateway.ref in programmed:
            found.append(Condition(ref, "", "Programmed", "True", "Programmed"))
        else:
            found.append(Condition(ref, "", "Programmed", "False", "Pending"))
    for vs in config.virtual_services:
        if vs.meta.kind not in ROUTE_KINDS:
            continue
        for parent in vs.gateways:
            known = parent == "mesh" or parent in gateways
            reason = "Accepted" if known else "NoMatchingParent"
            found.append(Condition(vs.meta.ref, parent, "Accepted", str(known), reason))
            resolved, why = resolved_refs(config.warnings, vs.meta.ref)
            found.append(Condition(vs.meta.ref, parent, "ResolvedRefs", resolved, why))
    return found
