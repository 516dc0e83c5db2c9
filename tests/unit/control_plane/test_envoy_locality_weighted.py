"""Envoy picks localities by their EDS weights only with locality weighted LB on.

Without ``common_lb_config.locality_weighted_lb_config`` Envoy ignores every
``LocalityLbEndpoints.load_balancing_weight`` and picks over all hosts of the
priority, so a ``distribute`` of 80/20 over two localities of one endpoint each
would come out 50/50. Istio turns the flag on for ``distribute`` and for explicit
failover rules that apply (outlier detection written); so do we, for Envoy only:
gRPC and our library always weight localities and must receive what they did.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import MappingProxyType

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format
from mesh_control_plane.config.model import (
    ConsistentHash,
    DestinationRule,
    LoadBalancerSettings,
    LocalityLbSetting,
    LocalityRule,
    MeshConfig,
    OutlierDetection,
    TrafficPolicy,
    WorkloadEndpoint,
)
from mesh_control_plane.translate import CLUSTER, ClientKind, NodeInfo, translate
from processes import envoy_binary

from .samples import http, meta, service
from .test_translate_envoy_accepts import bootstrap_for

HOST = "pay.mesh"
CLUSTER_NAME = f"outbound|8080||{HOST}"
DISTRIBUTE = LocalityLbSetting(distribute=(LocalityRule("*", {"r/a": 80, "r/b": 20}),))
FAILOVER = LocalityLbSetting(failover=(LocalityRule("r", {"s": 0}),))
OD = OutlierDetection(consecutive_5xx_errors=3)
ENVOY = ClientKind.ENVOY


def mesh(lb: LoadBalancerSettings | None, od: OutlierDetection | None = None) -> MeshConfig:
    rule = DestinationRule(
        meta=meta("DestinationRule", "pay"),
        host=HOST,
        traffic_policy=TrafficPolicy(load_balancer=lb, outlier_detection=od),
    )
    endpoints = (
        WorkloadEndpoint("10.0.1.1", locality="r/a"),
        WorkloadEndpoint("10.0.2.1", locality="r/b"),
    )
    return MeshConfig(
        service_entries=(service(HOST, (http(8080),), endpoints),), destination_rules=(rule,)
    )


def cluster(config: MeshConfig, kind: ClientKind) -> cluster_pb2.Cluster:
    registry = MappingProxyType({HOST: config.service_entries[0].endpoints})
    node = NodeInfo(id="c", kind=kind, locality=("r", "a", ""))
    out: cluster_pb2.Cluster = translate(config, registry, node).resources[CLUSTER][CLUSTER_NAME]
    return out


def weighted(c: cluster_pb2.Cluster) -> bool:
    chosen: str | None = c.common_lb_config.WhichOneof("locality_config_specifier")
    return chosen == "locality_weighted_lb_config"


HASH = ConsistentHash("header", "x-user")
MAGLEV = ConsistentHash("header", "x-user", maglev=True)


@pytest.mark.parametrize(
    "lb",
    [
        LoadBalancerSettings(locality_lb_setting=DISTRIBUTE),
        LoadBalancerSettings(simple="LEAST_REQUEST", locality_lb_setting=DISTRIBUTE),
        LoadBalancerSettings(simple="RANDOM", locality_lb_setting=DISTRIBUTE),
        LoadBalancerSettings(consistent_hash=HASH, locality_lb_setting=DISTRIBUTE),
        LoadBalancerSettings(consistent_hash=MAGLEV, locality_lb_setting=DISTRIBUTE),
    ],
    ids=["round_robin", "least_request", "random", "ring_hash", "maglev"],
)
@pytest.mark.interop  # runs a real Envoy (--mode validate)
def test_distribute_turns_locality_weights_on_for_envoy(
    lb: LoadBalancerSettings, tmp_path: Path
) -> None:
    """Every LB policy gets the flag, and Envoy 1.40 accepts each combination."""
    config = mesh(lb)
    assert weighted(cluster(config, ClientKind.ENVOY))
    registry = MappingProxyType({HOST: config.service_entries[0].endpoints})
    rs = translate(config, registry, NodeInfo(id="e", kind=ClientKind.ENVOY))
    path = tmp_path / "bootstrap.json"
    path.write_text(json_format.MessageToJson(bootstrap_for(rs)))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", [ClientKind.GRPC, ClientKind.MESH])
def test_grpc_and_library_clusters_are_unchanged(kind: ClientKind) -> None:
    """They weight localities on their own; a common_lb_config would be noise."""
    assert not cluster(mesh(LoadBalancerSettings(locality_lb_setting=DISTRIBUTE)), kind).HasField(
        "common_lb_config"
    )


def test_explicit_failover_with_outlier_detection_turns_it_on() -> None:
    assert weighted(cluster(mesh(LoadBalancerSettings(locality_lb_setting=FAILOVER), OD), ENVOY))


@pytest.mark.parametrize(
    ("lb", "od"),
    [
        (None, None),
        (LoadBalancerSettings(simple="ROUND_ROBIN"), OD),
        # Failover needs outlier detection to apply at all (endpoints._priority).
        (LoadBalancerSettings(locality_lb_setting=FAILOVER), None),
        # An enabled setting without rules: Istio's default keeps Envoy's flat pick.
        (LoadBalancerSettings(locality_lb_setting=LocalityLbSetting()), OD),
        (
            LoadBalancerSettings(
                locality_lb_setting=LocalityLbSetting(
                    enabled=False, distribute=DISTRIBUTE.distribute
                )
            ),
            None,
        ),
    ],
    ids=["no_rule", "no_locality_setting", "failover_without_od", "enabled_only", "disabled"],
)
def test_no_flag_without_weights_that_carry_intent(
    lb: LoadBalancerSettings | None, od: OutlierDetection | None
) -> None:
    assert not weighted(cluster(mesh(lb, od), ENVOY))


def test_outlier_detection_panic_threshold_survives_the_flag() -> None:
    """Both live in common_lb_config: setting one must not clear the other."""
    od = OutlierDetection(consecutive_5xx_errors=3, min_health_percent=40)
    c = cluster(mesh(LoadBalancerSettings(locality_lb_setting=DISTRIBUTE), od), ENVOY)
    assert weighted(c)
    assert c.common_lb_config.healthy_panic_threshold.value == 40.0
