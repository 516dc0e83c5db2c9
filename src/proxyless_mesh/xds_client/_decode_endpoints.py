"""ClusterLoadAssignment (EDS) decoding, natively when the native core is
installed (issue 25). Both decoders produce the same plain view of the fields
the client reads, from bytes (Rust, `proxyless_mesh_native`) or from a
Python protobuf message; `assignment_from_view` validates it and builds the
model, so there is one validation. tests/property/test_native_decode.py runs
both on the same generated messages and demands the same view.

Without the native core (no Rust at install time) or with
PROXYLESS_MESH_NATIVE=off, the Python protobuf runtime decodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxyless_mesh.errors import XdsResourceError
from proxyless_mesh.model import (
    ClusterLoadAssignment,
    Endpoint,
    HealthStatus,
    Locality,
    LocalityEndpoints,
)
from proxyless_mesh.xds_client._wire import native_module

# (host_identifier, address kind, address, port_value or None, weight or None, health,
#  Istio's workload metadata or "")
EndpointView = tuple[str | None, str | None, str, int | None, int | None, int, str]
ISTIO_METADATA = "istio"  # Istio's filter metadata namespace on endpoints
# (region, zone, sub_zone, weight or None, priority, endpoints)
LocalityView = tuple[str, str, str, int | None, int, list[EndpointView]]
# (cluster_name, overprovisioning_factor or None, localities)
AssignmentView = tuple[str, int | None, list[LocalityView]]


def _load_native() -> Callable[[bytes], AssignmentView] | None:
    module = native_module()
    if module is None:
        return None
    decode: Callable[[bytes], AssignmentView] = module.decode_cluster_load_assignment
    return decode


native_decode = _load_native()


class NativeAssignment:
    """A ClusterLoadAssignment decoded natively from its bytes, not yet
    validated: what `unpack_resource` returns instead of a protobuf message."""

    __slots__ = ("view",)

    def __init__(self, view: AssignmentView) -> None:
        self.view = view

    @property
    def cluster_name(self) -> str:
        return self.view[0]


def decode_native(data: bytes) -> NativeAssignment:
    """Decode with the native core (only call when `native_decode` is set)."""
    assert native_decode is not None
    try:
        return NativeAssignment(native_decode(data))
    except ValueError as exc:
        raise XdsResourceError(f"cannot parse ClusterLoadAssignment: {exc}") from None


def view_from_message(msg: Any) -> AssignmentView:
    """The same view from an envoy.config.endpoint.v3.ClusterLoadAssignment."""
    factor = (
        msg.policy.overprovisioning_factor.value
        if msg.policy.HasField("overprovisioning_factor")
        else None
    )
    return (msg.cluster_name, factor, [_locality_view(lle) for lle in msg.endpoints])


def _locality_view(lle: Any) -> LocalityView:
    weight = lle.load_balancing_weight.value if lle.HasField("load_balancing_weight") else None
    endpoints = [_endpoint_view(lb) for lb in lle.lb_endpoints]
    loc = lle.locality
    return (loc.region, loc.zone, loc.sub_zone, weight, lle.priority, endpoints)


def _endpoint_view(lb: Any) -> EndpointView:
    address = lb.endpoint.address
    kind = address.WhichOneof("address")
    sa = address.socket_address
    port = sa.port_value if sa.WhichOneof("port_specifier") == "port_value" else None
    weight = lb.load_balancing_weight.value if lb.HasField("load_balancing_weight") else None
    host = lb.WhichOneof("host_identifier")
    return (host, kind, sa.address, port, weight, lb.health_status, _workload_metadata(lb))


def _workload_metadata(lb: Any) -> str:
    """Istio's `istio` filter metadata `workload` string of an endpoint, "" if none."""
    istio = lb.metadata.filter_metadata.get(ISTIO_METADATA)
    if istio is None:
        return ""
    value = istio.fields.get("workload")
    return value.string_value if value is not None else ""


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
