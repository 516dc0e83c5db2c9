"""EDS carries registry health: statuses, healthy-only locality weights (gRPC), and one
endpoint per address when a restarted workload reuses its draining predecessor's port."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from envoy.config.core.v3 import health_check_pb2
from mesh_control_plane.config.model import MeshConfig, ServicePort, WorkloadEndpoint
from mesh_control_plane.translate import ENDPOINT, ClientKind, NodeInfo, translate

from .samples import service

HOST = "pay.mesh"
CLUSTER_NAME = f"outbound|8080||{HOST}"
NODE = NodeInfo(id="client", kind=ClientKind.MESH)


def assignment(*instances: WorkloadEndpoint, node: NodeInfo = NODE) -> Any:
    """The whole-service ClusterLoadAssignment for a registry holding `instances`."""
    cfg = MeshConfig(service_entries=(service(HOST, (ServicePort(8080, "HTTP", "http"),), ()),))
    registry = MappingProxyType({HOST: tuple(instances)})
    return translate(cfg, registry, node).resources[ENDPOINT][CLUSTER_NAME]


def statuses(cla: Any) -> dict[str, str]:
    return {
        lb.endpoint.address.socket_address.address: health_check_pb2.HealthStatus.Name(
            lb.health_status
        )
        for group in cla.endpoints
        for lb in group.lb_endpoints
    }


def test_registry_health_becomes_health_status() -> None:
    cla = assignment(
        WorkloadEndpoint("10.0.0.1"),
        WorkloadEndpoint("10.0.0.2", health="DRAINING"),
        WorkloadEndpoint("10.0.0.3", health="UNHEALTHY"),
        WorkloadEndpoint("10.0.0.4", health="SOMETHING-NEW"),
    )
    assert statuses(cla) == {
        "10.0.0.1": "HEALTHY",
        "10.0.0.2": "DRAINING",
        "10.0.0.3": "UNHEALTHY",
        "10.0.0.4": "UNHEALTHY",  # an unknown status is not served
    }


def test_grpc_locality_weight_counts_only_healthy_instances() -> None:
    """gRPC's weighted_target does not scale by health (other kinds: see
    test_locality_weights.py)."""
    cla = assignment(
        WorkloadEndpoint("10.0.0.1", locality="r/a", weight=3),
        WorkloadEndpoint("10.0.0.2", locality="r/a", weight=5, health="DRAINING"),
        WorkloadEndpoint("10.0.0.3", locality="r/b", weight=2),
        WorkloadEndpoint("10.0.0.4", locality="r/b", weight=2, health="UNHEALTHY"),
        WorkloadEndpoint("10.0.0.5", locality="r/c", weight=4, health="DRAINING"),
        node=NodeInfo(id="client", kind=ClientKind.GRPC),
    )
    weights = {g.locality.zone: g.load_balancing_weight.value for g in cla.endpoints}
    # r/c has no healthy instance: weight 1, the smallest gRPC accepts.
    assert weights == {"a": 3, "b": 2, "c": 1}


def test_duplicate_address_keeps_the_serving_instance() -> None:
    old = WorkloadEndpoint("10.0.0.1", {"http": 9000}, {"gen": "1"}, health="DRAINING")
    new = WorkloadEndpoint("10.0.0.1", {"http": 9000}, {"gen": "2"})
    gone = WorkloadEndpoint("10.0.0.1", {"http": 9000}, {"gen": "0"}, health="UNHEALTHY")
    for order in ((old, new, gone), (gone, new, old), (new, gone, old)):
        cla = assignment(*order)
        assert statuses(cla) == {"10.0.0.1": "HEALTHY"}
    assert statuses(assignment(gone, old)) == {"10.0.0.1": "DRAINING"}
