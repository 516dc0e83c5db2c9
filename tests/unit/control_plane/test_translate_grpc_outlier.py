"""Istio's consecutive-error outlierDetection, restated for grpcio (gRFC A50).

A50 ejects only by success rate or failure percentage; failure-percentage
ejection runs when enforcing_failure_percentage is set and non-zero. gRPC
clients get that approximation next to the consecutive fields; Envoy and our
library get Istio's mapping untouched.
"""

from __future__ import annotations

from typing import Any

import pytest
from mesh_control_plane.config.model import (
    DestinationRule,
    MeshConfig,
    OutlierDetection,
    ServicePort,
    TrafficPolicy,
    WorkloadEndpoint,
)
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import CLUSTER, ClientKind, NodeInfo, translate
from mesh_control_plane.translate.cluster_policies import (
    GRPC_FAILURE_PERCENTAGE_THRESHOLD,
    consecutive_errors,
)

from .samples import meta, service

HOST = "pay.mesh"
CLUSTER_NAME = f"outbound|8080||{HOST}"
ENDPOINTS = (WorkloadEndpoint("10.0.0.1"), WorkloadEndpoint("10.0.0.2"))


def outlier(kind: ClientKind, od: OutlierDetection) -> Any:
    """The cluster's outlier_detection as a client of `kind` receives it."""
    rule = DestinationRule(
        meta("DestinationRule", "pay"), HOST, TrafficPolicy(outlier_detection=od)
    )
    cfg = MeshConfig(
        service_entries=(service(HOST, (ServicePort(8080, "GRPC", "grpc"),), ENDPOINTS),),
        destination_rules=(rule,),
    )
    clusters: Any = translate(cfg, build_static_registry(cfg), NodeInfo("n", kind)).resources[
        CLUSTER
    ]
    return clusters[CLUSTER_NAME].outlier_detection


ISTIO = OutlierDetection(
    consecutive_5xx_errors=3, interval=1.0, base_ejection_time=30.0, max_ejection_percent=50
)


def test_grpc_gets_failure_percentage_ejection_and_keeps_consecutive_fields() -> None:
    out = outlier(ClientKind.GRPC, ISTIO)
    # A50 enables the algorithm only with a non-zero enforcing_failure_percentage.
    assert out.enforcing_failure_percentage.value == 100
    assert out.failure_percentage_threshold.value == GRPC_FAILURE_PERCENTAGE_THRESHOLD < 100
    # Judged in a 2-host cluster (A50's default of 5 would never judge it) ...
    assert out.failure_percentage_minimum_hosts.value == 1
    # ... once a host has as many calls in an interval as Istio's error count.
    assert out.failure_percentage_request_volume.value == 3
    assert out.enforcing_success_rate.value == 0
    assert (out.consecutive_5xx.value, out.enforcing_consecutive_5xx.value) == (3, 100)
    assert (out.interval.seconds, out.base_ejection_time.seconds) == (1, 30)
    assert out.max_ejection_percent.value == 50


@pytest.mark.parametrize("kind", [ClientKind.MESH, ClientKind.ENVOY])
def test_other_clients_get_istio_mapping_only(kind: ClientKind) -> None:
    out = outlier(kind, ISTIO)
    assert not out.HasField("enforcing_failure_percentage")
    assert not out.HasField("failure_percentage_threshold")
    assert not out.HasField("failure_percentage_minimum_hosts")
    assert not out.HasField("failure_percentage_request_volume")
    assert out.consecutive_5xx.value == 3


@pytest.mark.parametrize(
    ("od", "expected"),
    [
        (OutlierDetection(), 5),  # Istio's default consecutive5xxErrors
        (OutlierDetection(consecutive_5xx_errors=7, consecutive_gateway_errors=2), 2),
        (OutlierDetection(consecutive_5xx_errors=0, consecutive_gateway_errors=4), 4),
        (OutlierDetection(consecutive_gateway_errors=9), 5),
        (OutlierDetection(consecutive_5xx_errors=0), None),
        (OutlierDetection(consecutive_5xx_errors=0, consecutive_gateway_errors=0), None),
    ],
)
def test_request_volume_is_the_smallest_enabled_error_count(
    od: OutlierDetection, expected: int | None
) -> None:
    assert consecutive_errors(od) == expected
    out = outlier(ClientKind.GRPC, od)
    if expected is None:
        # Every consecutive detector is off: nothing to approximate.
        assert not out.HasField("enforcing_failure_percentage")
    else:
        assert out.failure_percentage_request_volume.value == expected
        assert out.enforcing_failure_percentage.value == 100
