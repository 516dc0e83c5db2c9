"""Locality weights lose an unhealthy share exactly once, whoever the client is.

Envoy's rule (arch overview, "Locality weighted load balancing"): within a
priority, locality i gets

    effective_i = weight_i * min(1, overprovisioning_factor / 100 * healthy_i / total_i)
    share_i     = effective_i / sum_j effective_j

(total_i leaves out DRAINING, which Envoy and our library exclude). The case
used throughout: locality A has 4 endpoints of which 2 are UNHEALTHY, locality
B has 4 HEALTHY ones, every endpoint weight 1, one priority, the default
overprovisioning factor 1.4. Priority 0 keeps all traffic: its availability
is min(1, 1.4 * 6/8) = 1.

- Envoy and our library must get weights 4 and 4: A's effective weight is
  4 * min(1, 1.4 * 2/4) = 2.8, B's 4, so A's share is 2.8 / 6.8 = 7/17 (41 %).
  (Without the overprovisioning factor it would be 2/6; 1.4 lifts it.)
- Sending healthy-only weights 2 and 4 would count A's health twice:
  2 * 0.7 = 1.4 against 4, a share of 1.4 / 5.4 = 26 %.
- grpcio's weighted_target does not scale by health, so a gRPC client gets the
  healthy sums 2 and 4 and, over A's 2 healthy endpoints, gives A 2/6.
"""

from __future__ import annotations

from collections import Counter
from types import MappingProxyType
from typing import Any

import pytest
from mesh_control_plane.config.model import MeshConfig, ServicePort, WorkloadEndpoint
from mesh_control_plane.translate import CLUSTER, ENDPOINT, ClientKind, NodeInfo, translate

from proxyless_mesh.balancer import ClusterBalancer
from proxyless_mesh.xds_client import decode_cluster, decode_cluster_load_assignment

from .samples import service

HOST = "pay.mesh"
CLUSTER_NAME = f"outbound|8080||{HOST}"
OVERPROVISIONING = 1.4
PICKS = 6800  # round robin over weights is deterministic per cycle; 6800 = 17 * 400


def instances() -> tuple[WorkloadEndpoint, ...]:
    a = [
        WorkloadEndpoint(f"10.0.1.{i}", locality="r/a", health="UNHEALTHY" if i < 2 else "HEALTHY")
        for i in range(4)
    ]
    b = [WorkloadEndpoint(f"10.0.2.{i}", locality="r/b") for i in range(4)]
    return (*a, *b)


def resources(kind: ClientKind, extra: tuple[WorkloadEndpoint, ...] = ()) -> tuple[Any, Any]:
    cfg = MeshConfig(service_entries=(service(HOST, (ServicePort(8080, "HTTP", "http"),), ()),))
    registry = MappingProxyType({HOST: instances() + extra})
    out = translate(cfg, registry, NodeInfo(id="client", kind=kind)).resources
    return out[CLUSTER][CLUSTER_NAME], out[ENDPOINT][CLUSTER_NAME]


def weights(cla: Any) -> dict[str, int]:
    return {g.locality.zone: g.load_balancing_weight.value for g in cla.endpoints}


def envoy_share(weights: dict[str, int], healthy: dict[str, int], total: dict[str, int]) -> float:
    """Locality a's share by Envoy's documented formula (module docstring)."""
    effective = {
        loc: w * min(1.0, OVERPROVISIONING * healthy[loc] / total[loc])
        for loc, w in weights.items()
    }
    return effective["a"] / sum(effective.values())


@pytest.mark.parametrize("kind", [ClientKind.MESH, ClientKind.ENVOY])
def test_health_scaling_clients_get_the_whole_locality_weight(kind: ClientKind) -> None:
    _, cla = resources(kind)
    assert weights(cla) == {"a": 4, "b": 4}


def test_grpc_gets_the_healthy_weight() -> None:
    _, cla = resources(ClientKind.GRPC)
    assert weights(cla) == {"a": 2, "b": 4}


def test_draining_endpoints_stay_out_of_the_weight() -> None:
    """Envoy and the library leave DRAINING hosts out of `total`; counted in the
    weight they would inflate the locality."""
    draining = (WorkloadEndpoint("10.0.1.9", locality="r/a", weight=5, health="DRAINING"),)
    _, cla = resources(ClientKind.MESH, draining)
    assert weights(cla) == {"a": 4, "b": 4}


def test_library_share_matches_envoy_formula() -> None:
    """What the library balancer does with what it is sent: A's share is 7/17.
    With the double count (weights 2 and 4) it would be 1.4 / 5.4."""
    cluster, cla = resources(ClientKind.MESH)
    balancer = ClusterBalancer(decode_cluster(cluster), decode_cluster_load_assignment(cla))
    picks: Counter[str] = Counter()
    for _ in range(PICKS):
        endpoint = balancer.pick()
        assert endpoint is not None
        picks[endpoint.address.rsplit(".", 2)[1]] += 1  # "1" = locality a, "2" = b
    expected = envoy_share({"a": 4, "b": 4}, {"a": 2, "b": 4}, {"a": 4, "b": 4})
    assert expected == pytest.approx(7 / 17)
    double_counted = envoy_share({"a": 2, "b": 4}, {"a": 2, "b": 4}, {"a": 4, "b": 4})
    assert double_counted == pytest.approx(1.4 / 5.4)
    share = picks["1"] / PICKS
    # Smooth weighted round robin is exact to a pick per cycle; 1 % is slack,
    # far from the 15-point gap to the double-counted share.
    assert share == pytest.approx(expected, abs=0.01), (share, picks)
    assert set(picks) == {"1", "2"}
