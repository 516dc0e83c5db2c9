"""EDS: registry instances -> ClusterLoadAssignments, grouped by locality.

Every cluster gets an assignment, an empty one when nothing serves it: a client then
learns at once that the cluster is empty, where gRPC would otherwise wait 15 s before
calling the resource missing.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from mesh_control_plane.config.model import ServicePort, WorkloadEndpoint
from mesh_control_plane.registry.static import Registry
from mesh_control_plane.translate.clusters import ClusterSpec

Locality = tuple[str, str, str]


def build_load_assignment(
    spec: ClusterSpec, registry: Registry
) -> endpoint_pb2.ClusterLoadAssignment:
    """The endpoints of one cluster.

    Instances of the host that carry every label of the subset (all of them for the
    whole-service cluster), on the port resolved by ``endpoint_port``. Localities are
    sorted; each carries ``load_balancing_weight`` = the sum of its endpoints'
    weights, since gRPC drops a locality without one.
    """
    labels = spec.subset.labels if spec.subset else {}
    members = [
        instance
        for instance in registry.get(spec.service.host, ())
        if all(instance.labels.get(key) == value for key, value in labels.items())
    ]
    by_locality: dict[Locality, list[tuple[str, int, int]]] = {}
    for instance in members:
        endpoint = (instance.address, endpoint_port(instance, spec.port), _weight(instance))
        by_locality.setdefault(parse_locality(instance.locality), []).append(endpoint)
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=spec.name)
    for locality in sorted(by_locality):
        assignment.endpoints.append(_locality_endpoints(locality, sorted(by_locality[locality])))
    return assignment


def endpoint_port(instance: WorkloadEndpoint, port: ServicePort) -> int:
    """The instance's port for the service port: its own mapping by port name, else
    the service port's ``target_port``, else the service port number (Istio's rule)."""
    if port.name in instance.ports:
        return instance.ports[port.name]
    if port.target_port is not None:
        return port.target_port
    return port.number


def parse_locality(locality: str) -> Locality:
    """``"region/zone/subzone"``, any part possibly missing, as a triple."""
    parts = [*locality.split("/", 2), "", ""] if locality else ["", "", ""]
    return (parts[0], parts[1], parts[2])


def _weight(instance: WorkloadEndpoint) -> int:
    # Istio treats an unset (0) weight as 1; Envoy rejects endpoint weights below 1.
    return max(1, instance.weight)


def _locality_endpoints(
    locality: Locality, endpoints: Iterable[tuple[str, int, int]]
) -> ec_pb2.LocalityLbEndpoints:
    group = ec_pb2.LocalityLbEndpoints(
        locality=base_pb2.Locality(region=locality[0], zone=locality[1], sub_zone=locality[2])
    )
    total = 0
    for address, port, weight in endpoints:
        total += weight
        lb_endpoint = group.lb_endpoints.add(health_status=health_check_pb2.HEALTHY)
        lb_endpoint.endpoint.address.CopyFrom(
            address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=address, port_value=port)
            )
        )
        lb_endpoint.load_balancing_weight.value = weight
    group.load_balancing_weight.value = max(1, total)
    return group
