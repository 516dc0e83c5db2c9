"""EDS endpoints carry Istio's telemetry metadata, as istiod writes it:
filter metadata `istio`, key `workload` = "workload name;namespace;canonical
service;canonical revision;cluster" (the default revision `latest` left out)."""

from __future__ import annotations

import pytest
from mesh_control_plane.config.model import WorkloadEndpoint
from mesh_control_plane.translate.endpoints import telemetry_metadata


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        (
            WorkloadEndpoint("10.0.0.1", labels={"app": "ratings", "version": "v3"},
                             workload_name="ratings-vm-1", namespace="shop"),
            "ratings-vm-1;shop;ratings;v3;Kubernetes",
        ),
        (  # Istio's canonical labels win over app/version; `latest` is the default
            WorkloadEndpoint("10.0.0.1", labels={
                "service.istio.io/canonical-name": "ratings-api", "app": "ratings",
                "service.istio.io/canonical-revision": "latest", "version": "v3",
            }, workload_name="ratings-vm-1", namespace="shop"),
            "ratings-vm-1;shop;ratings-api;;Kubernetes",
        ),
        (  # no labels: the canonical service is the workload's name
            WorkloadEndpoint("10.0.0.1", workload_name="vm-7", namespace="shop"),
            "vm-7;shop;vm-7;;Kubernetes",
        ),
        (  # a ServiceEntry's inline endpoint has no workload (Istio's rule)
            WorkloadEndpoint("10.0.0.1", labels={"app": "details"}),
            ";;details;;Kubernetes",
        ),
    ],
)  # fmt: skip
def test_telemetry_metadata(endpoint: WorkloadEndpoint, expected: str) -> None:
    assert telemetry_metadata(endpoint) == expected
