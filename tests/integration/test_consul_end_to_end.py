"""Consul end to end: services registered in Consul (library side, py-consul, TTL
check kept passing) become mesh hosts `<name>.service.consul` that a mesh client
reaches; deregistration removes them.

Against the Consul double (tests/consul_double.py, Consul's documented HTTP API)
always; against a real `consul agent -dev` when `consul` is on PATH.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mesh_control_plane.app import ControlPlane
from mesh_control_plane.registry.consul import ConsulSettings
from mesh_control_plane.registry.runtime import RegistrySettings
from meshlab import LocalMesh
from processes import stop
from registration_plane import wait_for

from proxyless_mesh import Mesh, NoHealthyUpstreamError, UnknownServicePortError
from proxyless_mesh.bootstrap import Bootstrap, make_bootstrap_json
from proxyless_mesh.registration import ConsulRegistration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from consul_double import ConsulDouble

URL = "http://web.service.consul:80/"


def _free_port() -> int:
    """For a real `consul agent -dev` only (not installed here: the double binds
    port 0 itself). Consul neither reports a port it picked nor sets
    SO_REUSEPORT (so processes.reserved_port cannot hold one for it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["double", "real"])
def consul_address(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "double":
        double = ConsulDouble()
        try:
            yield double.start()
        finally:
            double.close()
        return
    binary = shutil.which("consul")
    if binary is None:
        pytest.skip(
            "no `consul` on PATH (not packaged for this machine: not in Debian, no PyPI "
            "binary); the Consul double covers the backend. Install Consul and re-run."
        )
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            "agent",
            "-dev",
            f"-http-port={port}",
            "-grpc-port=-1",
            "-dns-port=-1",
            f"-data-dir={tmp_path / 'consul'}",
            "-bind=127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        address = f"http://127.0.0.1:{port}"
        wait_for(lambda: _leader(address), 20, "consul agent -dev leader")
        yield address
    finally:
        stop(proc)


def _leader(address: str) -> bool:
    try:
        return bool(httpx.get(f"{address}/v1/status/leader", timeout=1).json())
    except (httpx.HTTPError, ValueError):
        return False


class Plane:
    def __init__(self, workdir: Path, consul: str) -> None:
        (workdir / "config").mkdir()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        settings = RegistrySettings(consul=ConsulSettings(address=consul, wait="5s"))
        self.plane = ControlPlane(workdir / "config", registry=settings)
        self.addresses = self.run(self.plane.start("127.0.0.1:0", "127.0.0.1:0"))

    def run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(20)

    def close(self) -> None:
        self.run(self.plane.stop(grace=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def test_consul_services_are_mesh_hosts(lab: LocalMesh, consul_address: str) -> None:
    plane = Plane(lab.workdir, consul_address)
    v1 = lab.start_http_backend("web", "v1")
    v2 = lab.start_http_backend("web", "v2")
    agent = consul_address.removeprefix("http://")
    regs = [
        ConsulRegistration(
            "web",
            p.ready["port"],
            service_id=f"web-{v}",
            tags=[f"version={v}"],
            consul_address=agent,
            ttl=2.0,
        )
        for v, p in (("v1", v1), ("v2", v2))
    ]
    try:
        for reg in regs:
            plane.run(reg.start())
        bootstrap = Bootstrap.from_json(
            make_bootstrap_json(
                server_uri=plane.addresses.xds,
                node_id="client",
                namespace="default",
                service_account="client",
            )
        )
        with Mesh(bootstrap) as mesh, httpx.Client(transport=mesh.httpx_transport()) as client:
            counts: Counter[str] = Counter()

            def both() -> bool:
                # Until the control plane has read the catalog, the host is not a
                # mesh host yet and the request passes through to DNS, where
                # `web.service.consul` does not resolve (UnknownServicePortError:
                # not a mesh host, nor one DNS knows): only the mesh can answer 200.
                # Between the registration and the first TTL pass Consul lists the
                # service with a critical check: a mesh host with no healthy
                # endpoint yet (NoHealthyUpstreamError, UH).
                try:
                    response = client.get(URL)
                except (httpx.ConnectError, UnknownServicePortError, NoHealthyUpstreamError):
                    return False
                counts[response.json()["version"]] += 1 if response.status_code == 200 else 0
                return min(counts["v1"], counts["v2"]) >= 5

            wait_for(both, 20, "traffic to both Consul instances")
            # Past the TTL: the library kept the checks passing.
            time.sleep(2.5)
            plane.run(regs[0].stop())  # deregistered in Consul -> out of the mesh
            wait_for(lambda: _versions(client, 20) == {"v2"}, 10, "only v2 after deregister")
    finally:
        for reg in regs:
            plane.run(reg.stop())
        lab.close()
        plane.close()


def _versions(client: httpx.Client, n: int) -> set[str]:
    return {client.get(URL).json()["version"] for _ in range(n)}
