"""A real Prometheus scrapes the control plane's admin /metrics: connected
clients and the convergence of a config change (issue 8), by PromQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from meshlab import LocalMesh
from test_telemetry_e2e import Prometheus

from proxyless_mesh import Mesh

HOST = "reviews.default.mesh"


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_prometheus_sees_clients_and_convergence(lab: LocalMesh, prometheus: Prometheus) -> None:
    v1 = lab.start_http_backend("reviews", "v1")
    v2 = lab.start_http_backend("reviews", "v2")
    lab.deploy_versions(HOST, 8080, {"v1": v1, "v2": v2}, {"v1": 100, "v2": 0})
    lab.start_control_plane()
    prometheus.start({"control-plane": [lab.admin_address]})
    preload = [f"{HOST}:8080"]
    with (
        Mesh.from_bootstrap(lab.bootstrap("a"), preload=preload),
        Mesh.from_bootstrap(lab.bootstrap("b"), preload=preload),
    ):
        prometheus.wait_for_value('sum(meshcp_xds_clients{kind="MESH"})', 2)
        before = prometheus.query("sum(meshcp_convergence_seconds_count)")
        rounds = float(before[0]["value"][1]) if before else 0.0
        lab.set_weights(HOST, {"v1": 0, "v2": 100})  # one change, pushed to both
        prometheus.wait_for_value("sum(meshcp_convergence_seconds_count)", rounds + 1)
        took = prometheus.query("meshcp_last_convergence_seconds")
        assert took and 0 < float(took[0]["value"][1]) < 5, took
