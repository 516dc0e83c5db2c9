"""ClusterLoadAssignment (EDS) decoding by the native core (issue 25): Rust
(`proxyless_mesh_native.decode_cluster_load_assignment`) reads the bytes
into a plain view of the fields the client uses; `assignment_from_view`
validates it and builds the model. tests/property/test_native_decode_props.py
holds the view to the protobuf runtime's reading of the same generated
bytes (tests/oracles/endpoints.py)."""

from __future__ import annotations

from collections.abc import Callable

from proxyless_mesh import native_core
from proxyless_mesh.errors import XdsResourceError
from proxyless_mesh.model import (
    ClusterLoadAssignment,
    Endpoint,
    HealthStatus,
    Locality,
    LocalityEndpoints,
)

# (host_identifier, address kind, address, port_value or None, weight or None, health,
#  Istio's workload metadata (filter metadata "istio", field "workload") or "")
EndpointView = tuple[str | None, str | None, str, int | None, int | None, int, str]
# (region, zone, sub_zone, weight or None, priority, endpoints)
LocalityView = tuple[str, str, str, int | None, int, list[EndpointView]]
# (cluster_name, overprovisioning_factor or None, localities)
AssignmentView = tuple[str, int | None, list[LocalityView]]

native_decode: Callable[[bytes], AssignmentView] = native_core.member(
    "decode_cluster_load_assignment"
)


class NativeAssignment:
    """A ClusterLoadAssignment decoded natively from its bytes, not yet
    validated: what `unpack_resource` returns instead of a message. It keeps
    the bytes, which the client records for CSDS and the disk cache."""

    __slots__ = ("data", "view")

    def __init__(self, view: AssignmentView, data: bytes) -> None:
        self.view = view
        self.data = data

    @property
    def cluster_name(self) -> str:
        return self.view[0]

    def SerializeToString(self, **_: object) -> bytes:  # a message's name for it
        return self.data


def decode(data: bytes) -> NativeAssignment:
    """The assignment in `data`; XdsResourceError for bytes that do not parse."""
    try:
        return NativeAssignment(native_decode(data), data)
    except ValueError as exc:
        raise XdsResourceError(f"cannot parse ClusterLoadAssignment: {exc}") from None


def assignment_from_view(view: AssignmentView) -> ClusterLoadAssignment:
    """Endpoints by locality. As in gRPC, a locality without a (non-zero)
    load_balancing_weight is dropped, and priorities must have no gaps."""
    cluster_name, factor, locality_views = view
    if not cluster_name:
        raise XdsResourceError("ClusterLoadAssignment has no cluster_name")
    localities: list[LocalityEndpoints] = []
    seen: set[tuple[str, int]] = set()
    for i, (region, zone, sub_zone, weight, priority, endpoint_views) in enumerate(locality_views):
        if not weight:
            continue
        endpoints = tuple(_endpoint(ev, i, j, seen) for j, ev in enumerate(endpoint_views))
        localities.append(
            LocalityEndpoints(
                locality=Locality(region, zone, sub_zone),
                endpoints=endpoints,
                weight=weight,
                priority=priority,
            )
        )
    priorities = sorted({loc.priority for loc in localities})
    if priorities != list(range(len(priorities))):
        raise XdsResourceError(f"sparse priority list {priorities}: priorities must be 0..N-1")
    if factor == 0:
        raise XdsResourceError("policy.overprovisioning_factor must be greater than 0")
    return ClusterLoadAssignment(
        cluster_name=cluster_name,
        localities=tuple(localities),
        overprovisioning_factor=140 if factor is None else factor,
    )


# HealthStatus by number, looked up rather than called (an Enum call costs
# more than the rest of an endpoint's checks).
_HEALTH = tuple(HealthStatus(n) for n in range(len(HealthStatus)))


def _endpoint(view: EndpointView, i: int, j: int, seen: set[tuple[str, int]]) -> Endpoint:
    host_identifier, kind, address, port, weight, health, workload = view
    problem = None
    if host_identifier != "endpoint":
        problem = "only inline endpoints are supported (no endpoint_name)"
    elif kind != "socket_address":
        problem = "only socket_address endpoints are supported"
    elif not address:
        problem = "empty address"
    elif port is None or not 0 < port <= 65535:
        problem = "invalid port (need port_value in 1..65535)"
    elif weight == 0:
        problem = "load_balancing_weight must be greater than 0"
    elif (address, port) in seen:
        problem = f"duplicate endpoint address {address}:{port}"
    if problem is not None:
        raise XdsResourceError(f"endpoints[{i}].lb_endpoints[{j}]: {problem}")
    assert port is not None  # checked above; for the type checker
    seen.add((address, port))
    status = _HEALTH[health] if 0 <= health < len(_HEALTH) else HealthStatus.UNKNOWN
    return Endpoint(
        address=address, port=port, weight=weight or 1, health=status, workload=workload
    )
