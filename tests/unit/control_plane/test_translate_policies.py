"""Translation choices for traffic policies that goldens show but do not explain:
per-client locality priorities, the gRPC substitutions, policy merging."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from mesh_control_plane.config.model import (
    DestinationRule,
    LoadBalancerSettings,
    LocalityLbSetting,
    LocalityRule,
    MeshConfig,
    OutlierDetection,
    PortTrafficPolicy,
    ServicePort,
    Subset,
    TrafficPolicy,
    WorkloadEndpoint,
)
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import (
    CLUSTER,
    ENDPOINT,
    ClientKind,
    NodeInfo,
    check_consistency,
    translate,
)
from mesh_control_plane.translate.locality import locality_match
from mesh_control_plane.translate.policy import effective_policy

from .samples import meta, policies, service

HOST = "pay.mesh"
CLUSTER_NAME = f"outbound|8080||{HOST}"
ENDPOINTS = (
    WorkloadEndpoint("10.0.0.1", locality="us-east/a/r1", labels={"net": "n1"}),
    WorkloadEndpoint("10.0.0.2", locality="us-east/a/r2", labels={"net": "n2"}),
    WorkloadEndpoint("10.0.0.3", locality="us-east/b", labels={"net": "n1"}),
    WorkloadEndpoint("10.0.0.4", locality="us-west/c", labels={"net": "n1"}),
    WorkloadEndpoint("10.0.0.5", locality="eu-west/d", labels={"net": "n1"}),
)


DETECTION = OutlierDetection()


def config(
    setting: LocalityLbSetting | None, outlier: OutlierDetection | None = DETECTION
) -> MeshConfig:
    policy = TrafficPolicy(
        load_balancer=LoadBalancerSettings(locality_lb_setting=setting),
        outlier_detection=outlier,
    )
    rule = DestinationRule(meta("DestinationRule", "pay"), HOST, policy)
    return MeshConfig(
        service_entries=(service(HOST, (ServicePort(8080, "HTTP", "http"),), ENDPOINTS),),
        destination_rules=(rule,),
    )


def priorities(cfg: MeshConfig, node: NodeInfo) -> dict[str, int]:
    """endpoint address -> priority, as `node` is sent them."""
    cla: Any = translate(cfg, build_static_registry(cfg), node).resources[ENDPOINT][CLUSTER_NAME]
    return {
        lb.endpoint.address.socket_address.address: group.priority
        for group in cla.endpoints
        for lb in group.lb_endpoints
    }


def at(locality: tuple[str, str, str], **labels: str) -> NodeInfo:
    return NodeInfo("n", ClientKind.GRPC, locality=locality, labels=tuple(sorted(labels.items())))


def test_istio_locality_priorities_from_the_clients_locality() -> None:
    result = priorities(config(LocalityLbSetting()), at(("us-east", "a", "r1")))
    assert result == {"10.0.0.1": 0, "10.0.0.2": 1, "10.0.0.3": 2, "10.0.0.4": 3, "10.0.0.5": 3}
    # Another client sees another order: EDS depends on the node.
    assert priorities(config(LocalityLbSetting()), at(("eu-west", "d", ""))) == {
        "10.0.0.1": 1,
        "10.0.0.2": 1,
        "10.0.0.3": 1,
        "10.0.0.4": 1,
        "10.0.0.5": 0,
    }


def test_failover_names_the_region_to_go_to_next() -> None:
    setting = LocalityLbSetting(failover=(LocalityRule("us-east", {"eu-west": 0}),))
    result = priorities(config(setting), at(("us-east", "b", "")))
    # same region 10.0.0.3 (0), same region other zone (2 -> 1), eu-west (3 -> 2), rest (4 -> 3)
    assert result == {"10.0.0.1": 1, "10.0.0.2": 1, "10.0.0.3": 0, "10.0.0.5": 2, "10.0.0.4": 3}


def test_failover_priority_labels() -> None:
    setting = LocalityLbSetting(failover_priority=("topology.kubernetes.io/region", "net"))
    result = priorities(config(setting), at(("us-east", "a", "r1"), net="n1"))
    # both match: 0; region matches, net differs: 1; region differs: 2
    assert result == {"10.0.0.1": 0, "10.0.0.3": 0, "10.0.0.2": 1, "10.0.0.4": 2, "10.0.0.5": 2}


def test_no_failover_without_outlier_detection_or_when_disabled() -> None:
    client = at(("us-east", "a", "r1"))
    assert set(priorities(config(LocalityLbSetting(), outlier=None), client).values()) == {0}
    assert set(priorities(config(LocalityLbSetting(enabled=False)), client).values()) == {0}
    assert set(priorities(config(None), client).values()) == {0}


def test_distribute_weights_per_client() -> None:
    setting = LocalityLbSetting(
        distribute=(LocalityRule("us-east/*", {"us-east/a/*": 80, "us-west/*": 20}),)
    )
    cfg = config(setting, outlier=None)
    cla: Any = translate(cfg, build_static_registry(cfg), at(("us-east", "b", ""))).resources[
        ENDPOINT
    ][CLUSTER_NAME]
    weights = {
        (g.locality.region, g.locality.zone, g.locality.sub_zone): g.load_balancing_weight.value
        for g in cla.endpoints
    }
    # us-east/a/* matches two localities of weight 1 each: 80 shared; unmatched ones dropped.
    assert weights == {
        ("us-east", "a", "r1"): 40,
        ("us-east", "a", "r2"): 40,
        ("us-west", "c", ""): 20,
    }
    # A client the rule is not for gets the plain weights.
    cla = translate(cfg, build_static_registry(cfg), at(("eu-west", "d", ""))).resources[ENDPOINT][
        CLUSTER_NAME
    ]
    assert len(cla.endpoints) == 5  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("us-east", True),
        ("us-east/*", True),
        ("us-east/a/*", True),
        ("us-east/b", False),
        ("*", True),
    ],
)
def test_locality_match_like_istio(pattern: str, expected: bool) -> None:
    assert locality_match(("us-east", "a", "r1"), pattern) is expected


def test_grpc_gets_ring_hash_for_maglev_and_no_slow_start() -> None:
    cfg = policies()
    registry = build_static_registry(cfg)
    grpc: Any = translate(cfg, registry, NodeInfo("g", ClientKind.GRPC)).resources[CLUSTER]
    envoy: Any = translate(cfg, registry, NodeInfo("e", ClientKind.ENVOY)).resources[CLUSTER]
    v2 = "outbound|8080|v2|shop.mesh"
    assert envoy[v2].lb_policy == cluster_pb2.Cluster.MAGLEV
    assert grpc[v2].lb_policy == cluster_pb2.Cluster.RING_HASH
    stock = "outbound|9090||stock.mesh"
    assert envoy[stock].round_robin_lb_config.HasField("slow_start_config")
    assert not grpc[stock].HasField("round_robin_lb_config")


def test_subset_and_port_settings_override_field_by_field() -> None:
    od = OutlierDetection(consecutive_5xx_errors=1)
    rule = DestinationRule(
        meta("DestinationRule", "x"),
        HOST,
        TrafficPolicy(
            load_balancer=LoadBalancerSettings(simple="RANDOM"),
            outlier_detection=od,
            port_level_settings=(
                PortTrafficPolicy(9000, load_balancer=LoadBalancerSettings(simple="LEAST_REQUEST")),
            ),
        ),
        subsets=(
            Subset("s", {}, TrafficPolicy(load_balancer=LoadBalancerSettings("ROUND_ROBIN"))),
        ),
    )
    assert effective_policy(rule, None, 8080).load_balancer == LoadBalancerSettings("RANDOM")
    assert effective_policy(rule, None, 9000).load_balancer == LoadBalancerSettings("LEAST_REQUEST")
    merged = effective_policy(rule, rule.subsets[0], 9000)
    assert merged.load_balancer == LoadBalancerSettings("ROUND_ROBIN")
    assert merged.outlier_detection == od


def test_policies_sample_is_consistent_for_every_client_kind() -> None:
    cfg = policies()
    for kind in ClientKind:
        rs = translate(cfg, build_static_registry(cfg), NodeInfo("n", kind, ("us-east", "a", "")))
        assert check_consistency(rs) == []


def test_a_missing_mirror_cluster_is_reported() -> None:
    cfg = policies()
    shadowless = dataclasses.replace(
        cfg, service_entries=tuple(s for s in cfg.service_entries if s.hosts != ("shadow.mesh",))
    )
    rs = translate(shadowless, build_static_registry(shadowless), NodeInfo("n", ClientKind.MESH))
    assert any("outbound|8080||shadow.mesh" in problem for problem in check_consistency(rs))
