"""ADS streams on worker processes (`meshctl control-plane --xds-workers 2`).

A library client under load is served by one of two workers sharing the xDS
port (SO_REUSEPORT). That worker is killed (SIGKILL): the client must lose no
request, reconnect to another worker, and follow a config change made after.
The leader serves no ADS itself: the pushes and the convergence its /metrics
shows are the workers'.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from typing import Any

import httpx
import pytest
from meshlab import LocalMesh
from registration_plane import wait_for
from test_failover_control_planes import HOST, Load

from proxyless_mesh import Mesh

pytestmark = pytest.mark.usefixtures("xds_engine")  # grpc.aio and the native engine


def serving_worker(lab: LocalMesh, node_id: str) -> int | None:
    """The pid of the worker serving `node_id`'s stream, per /status."""
    with urllib.request.urlopen(f"http://{lab.admin_address}/status", timeout=5) as r:
        status: dict[str, Any] = json.loads(r.read())
    found = [c.get("worker") for c in status["clients"] if c["node_id"] == node_id]
    return int(found[0]) if len(found) == 1 and found[0] else None


def metric(lab: LocalMesh, sample: str) -> float:
    """One sample's value on the leader's /metrics page (0 when absent)."""
    with urllib.request.urlopen(f"http://{lab.admin_address}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            name, _, value = line.rpartition(" ")
            if name == sample:
                return float(value)
    return 0.0


def test_killed_worker_loses_no_request(lab: LocalMesh) -> None:
    v1 = lab.start_http_backend("reviews", "v1")
    v2 = lab.start_http_backend("reviews", "v2")
    lab.deploy_versions(HOST, 8080, {"v1": v1, "v2": v2}, {"v1": 100, "v2": 0})
    lab.start_control_plane(extra_args=["--xds-workers", "2", "--log-level", "INFO"])

    with (
        Mesh.from_bootstrap(lab.bootstrap("client-1"), preload=[f"{HOST}:8080"]) as mesh,
        httpx.Client(transport=mesh.httpx_transport()) as client,
        Load(client) as load,
    ):
        wait_for(lambda: load.counts["v1"] > 50, 15, "traffic to v1")
        wait_for(lambda: serving_worker(lab, "client-1") is not None, 10, "a worker's report")
        worker = serving_worker(lab, "client-1")
        assert worker is not None and worker != lab.control_plane.popen.pid  # type: ignore[union-attr]
        assert metric(lab, 'meshcp_xds_clients{kind="MESH"}') == 1
        assert metric(lab, 'meshcp_xds_pushes_total{type="LDS"}') >= 1

        os.kill(worker, signal.SIGKILL)
        wait_for(
            lambda: serving_worker(lab, "client-1") not in (None, worker) and mesh.xds.connected,
            15,
            "the client on another worker",
        )
        served = sum(load.counts.values())
        lab.set_weights(HOST, {"v1": 0, "v2": 100})  # only a live worker can send this
        wait_for(lambda: load.counts["v2"] > 50, 15, "the change, from the new worker")
        wait_for(
            lambda: metric(lab, "meshcp_convergence_seconds_count") >= 1,
            10,
            "the change's convergence, measured by the worker",
        )
        assert sum(load.counts.values()) > served
    assert load.failures == []


def test_config_dump_of_a_node_on_a_worker(lab: LocalMesh) -> None:
    """`/config_dump?node=` at the leader shows what the worker serving that
    node sent it (the leader serves no ADS stream itself)."""
    v1 = lab.start_http_backend("reviews", "v1")
    lab.deploy_versions(HOST, 8080, {"v1": v1}, {"v1": 100})
    lab.start_control_plane(extra_args=["--xds-workers", "2"])

    with Mesh.from_bootstrap(lab.bootstrap("client-1"), preload=[f"{HOST}:8080"]):
        wait_for(lambda: serving_worker(lab, "client-1") is not None, 10, "a worker's report")
        worker = serving_worker(lab, "client-1")
        with httpx.Client(base_url=f"http://{lab.admin_address}", timeout=10) as admin:
            dump = admin.get("/config_dump", params={"node": "client-1"})
            missing = admin.get("/config_dump", params={"node": "nobody"})

    assert dump.status_code == 200, dump.text
    [stream] = dump.json()["streams"]
    assert stream["worker"] == worker != lab.control_plane.popen.pid  # type: ignore[union-attr]
    assert stream["kind"] == "MESH"
    listeners = stream["types"]["LDS"]
    assert listeners["sent"]
    assert f"{HOST}:8080" in listeners["resources"]
    assert any(HOST in name for name in stream["types"]["CDS"]["resources"])
    assert missing.status_code == 404
    assert "asked the leader and 2 ADS workers" in missing.text
