"""`meshctl control-plane` flags for the registries: a real control plane
process watching a Consul (the HTTP API double) serves its services to a
mesh client, and a workload-groups directory is accepted."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from meshlab import LocalMesh

from proxyless_mesh import Mesh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from consul_double import ConsulDouble


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    double = ConsulDouble()
    double.start()
    try:
        yield double
    finally:
        double.close()


def test_consul_flags_make_consul_services_mesh_hosts(lab: LocalMesh, consul: ConsulDouble) -> None:
    backend = lab.start_http_backend("web", "v1")
    consul.register("web", "127.0.0.1", backend.ready["port"], tags=["version=v1"])
    groups = lab.workdir / "groups"
    groups.mkdir()
    lab.start_control_plane(
        extra_args=[
            "--consul-address",
            consul.address,
            "--workload-groups-dir",
            str(groups),
            "--registration-grace",
            "5s",
        ]
    )
    registry = httpx.get(f"http://{lab.admin_address}/registry").json()
    assert "ConsulRegistry" in registry, registry
    with Mesh.from_bootstrap(lab.bootstrap("c")) as mesh:
        client = httpx.Client(transport=mesh.httpx_transport())
        deadline = time.monotonic() + 15
        while True:  # the watcher's first blocking query may still be in flight
            try:
                response = client.get("http://web.service.consul:80/hello")
                if response.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "web.service.consul never became routable"
            time.sleep(0.1)
        assert response.json()["service"] == "web"
