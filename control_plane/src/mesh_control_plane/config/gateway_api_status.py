"""Gateway API status conditions (Accepted, ResolvedRefs, Programmed) of a
loaded configuration: pure, shown by `meshctl gateway status` and written to
the resources by the control plane on Kubernetes (kube/gateway_status.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .gateway_api_attach import INVALID_ROUTE_KINDS, attachment
from .gateway_api_refs import ROUTE_KINDS, resolved_refs
from .model import MeshConfig
from .parse_gateway import GatewayServer, ParentRef
from .parse_gateway_api import GATEWAY_NAME_LABEL


@dataclass(frozen=True)
class Condition:
    resource: str  # "Kind ns/name"
    parent: str  # "" for a Gateway; the parent ("ns/name" or "mesh") for a route
    type: str
    status: str  # True | False | Unknown
    reason: str
    message: str = ""

    def __str__(self) -> str:
        where = f" parent {self.parent}" if self.parent else ""
        said = f": {self.message}" if self.message else ""
        return f"{self.resource}{where}: {self.type}={self.status} ({self.reason}){said}"


@dataclass(frozen=True)
class Programmed:
    """A Gateway's Programmed condition, from its Envoys' ACKs (xds/gateway_acks.py)."""

    status: str
    reason: str  # Programmed | Pending | Invalid (its Envoy NACKed)
    message: str


# The worse verdict wins when several Envoys serve one Gateway.
_RANK = {"Programmed": 0, "Pending": 1, "Invalid": 2}


def worst(verdicts: Mapping[str, Programmed], into: dict[str, Programmed]) -> None:
    """Merge `verdicts` ("ns/name" -> Programmed) into `into`, the worse one winning."""
    for ref, verdict in verdicts.items():
        if ref not in into or _RANK.get(verdict.reason, 2) > _RANK.get(into[ref].reason, 2):
            into[ref] = verdict


NO_ENVOY = Programmed(
    "False", "NoResources", "no gateway Envoy for it is connected (`meshctl gateway run`)"
)


def conditions(config: MeshConfig, programmed: Mapping[str, Programmed] | None) -> list[Condition]:
    """`programmed`: the verdict of each Gateway ("ns/name") with a connected
    Envoy (None: not known, offline)."""
    found: list[Condition] = []
    gateways = {g.ref: g for g in config.gateways}
    for gateway in config.gateways:
        if GATEWAY_NAME_LABEL not in gateway.selector:
            continue  # an Istio Gateway: no Gateway API status
        ref = gateway.meta.ref
        found.append(Condition(ref, "", "Accepted", "True", "Accepted"))
        if programmed is None:
            found.append(Condition(ref, "", "Programmed", "Unknown", "Pending"))
        else:
            state = programmed.get(gateway.ref, NO_ENVOY)
            found.append(
                Condition(ref, "", "Programmed", state.status, state.reason, state.message)
            )
    for vs in config.virtual_services:
        if vs.meta.kind not in ROUTE_KINDS:
            continue
        # GAMMA: the mesh is the parent (its Service exists or the config would not load).
        parents = vs.parent_refs or tuple(ParentRef(g) for g in vs.gateways)
        for parent in parents:
            reason, message = "Accepted", ""
            if parent.gateway in gateways:
                reason, message = attachment(gateways[parent.gateway], vs, parent)
            elif parent.gateway != "mesh":
                reason = "NoMatchingParent"
            accepted = str(reason == "Accepted")
            where = str(parent)
            found.append(Condition(vs.meta.ref, where, "Accepted", accepted, reason, message))
            resolved, why = resolved_refs(config.warnings, vs.meta.ref)
            found.append(Condition(vs.meta.ref, where, "ResolvedRefs", resolved, why))
    return found


def listener_resolved_refs(server: GatewayServer) -> tuple[str, str, str]:
    """(status, reason, message) of a listener's ResolvedRefs condition:
    False, InvalidRouteKinds, when `allowedRoutes.kinds` names a kind it
    cannot serve (it serves the others)."""
    if server.invalid_kinds:
        said = "; ".join(f"{field}: {message}" for field, message in server.invalid_kinds)
        return "False", INVALID_ROUTE_KINDS, said
    return "True", "ResolvedRefs", "its references resolve"
