"""Self-registration end to end: no endpoint YAML at all.

A real control plane (in this process, on its own loop and thread, so the test can
read its registry) with a CA and WorkloadGroups; real backend processes that join
with `Mesh(register=Registration(...))`; a mesh client routing through a
VirtualService split. Covers: the split applies to registered instances, an
abruptly killed one turns UNHEALTHY in EDS and leaves within the grace period, a
clean stop under load is DRAINING in EDS before it leaves and fails no request, and
registering into another identity's group is refused.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from envoy.config.core.v3 import health_check_pb2
from mesh_control_plane.app import ControlPlane
from mesh_control_plane.ca import CaSettings, TokenAuthority
from mesh_control_plane.registry.runtime import RegistrySettings
from mesh_control_plane.translate.names import cluster_name
from mesh_control_plane.translate.node import ClientKind, NodeInfo
from mesh_control_plane.translate.resources import ENDPOINT
from meshlab import LocalMesh, start_process, subsets_rule, weighted_route

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap, make_bootstrap_json
from proxyless_mesh.security import SpiffeId

HOST = "reviews.default.svc"
URL = f"http://{HOST}:9080/reviews"
GRACE = 1.5
SCRIPT = Path(__file__).with_name("registering_backend.py")

SERVICE_ENTRY = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "ServiceEntry",
    "metadata": {"name": "reviews", "namespace": "default"},
    "spec": {
        "hosts": [HOST],
        "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
        "resolution": "STATIC",
        "workloadSelector": {"labels": {"app": "reviews"}},
    },
}


def group(name: str, sa: str) -> dict[str, object]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadGroup",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "metadata": {"labels": {"app": name}},
            "template": {"serviceAccount": sa, "ports": {"http": 9080}},
        },
    }


def wait_for(check: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {limit}s")
        time.sleep(0.02)


class Plane:
    """A ControlPlane on its own event loop thread."""

    def __init__(self, workdir: Path, extra_config: str = "") -> None:
        self.config_dir = workdir / "config"
        self.groups_dir = workdir / "groups"
        self.ca_dir = workdir / "mesh-ca"
        for d in (self.config_dir, self.groups_dir):
            d.mkdir()
        (self.config_dir / "reviews.yaml").write_text(
            json.dumps(SERVICE_ENTRY) + "\n---\n" + subsets_rule(HOST, ["v1", "v2"])
        )
        (self.config_dir / "route.yaml").write_text(weighted_route(HOST, {"v1": 50, "v2": 50}))
        if extra_config:
            (self.config_dir / "extra.yaml").write_text(extra_config)
        (self.groups_dir / "groups.yaml").write_text(
            json.dumps(group("reviews", "reviews"))
            + "\n---\n"
            + json.dumps(group("ratings", "ratings"))
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.plane = ControlPlane(
            self.config_dir,
            ca=CaSettings(ca_dir=self.ca_dir),
            registry=RegistrySettings(workload_groups_dir=self.groups_dir, grace=GRACE),
        )
        self.addresses = self._run(self.plane.start("127.0.0.1:0", "127.0.0.1:0"))

    def _run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(20)

    def ports(self) -> list[int]:
        """The registered instances' ports the translator serves (HEALTHY) for HOST now."""
        return sorted(port for port, health in self.eds().items() if health == "HEALTHY")

    def eds(self, host: str = HOST, port: int = 9080) -> dict[int, str]:
        """port -> health_status of every endpoint of host:port in the EDS a mesh
        client gets now (the whole-service cluster: it holds every instance)."""

        async def read() -> dict[int, str]:
            node = NodeInfo(id="observer", kind=ClientKind.MESH)
            packed = self.plane.cache.resources(node, ENDPOINT)[cluster_name(host, port)]
            return {
                lb.endpoint.address.socket_address.port_value: (
                    health_check_pb2.HealthStatus.Name(lb.health_status)
                )
                for group in packed.message.endpoints  # type: ignore[attr-defined]
                for lb in group.lb_endpoints
            }

        return self._run(read())  # type: ignore[no-any-return]

    def bootstrap(self, workdir: Path, node: str, sa: str) -> Path:
        token = TokenAuthority.open(self.ca_dir).mint(
            SpiffeId("cluster.local", "default", sa), 3600
        )
        path = workdir / f"bootstrap-{node}.json"
        path.write_text(
            make_bootstrap_json(
                server_uri=self.addresses.xds,
                node_id=node,
                namespace="default",
                service_account=sa,
                token=token,
            )
        )
        return path

    def close(self) -> None:
        self._run(self.plane.stop(grace=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def plane(lab: LocalMesh) -> Iterator[Plane]:
    p = Plane(lab.workdir)
    try:
        yield p
    finally:
        lab.close()  # the workloads first, then the control plane they talk to
        p.close()


def start_workload(
    lab: LocalMesh, plane: Plane, node: str, version: str, grp: str = "reviews", sa: str = "reviews"
):  # type: ignore[no-untyped-def]
    proc = start_process(
        node,
        [
            sys.executable,
            str(SCRIPT),
            "--bootstrap",
            str(plane.bootstrap(lab.workdir, node, sa)),
            "--group",
            f"default/{grp}",
            "--version",
            version,
        ],
        lab.workdir,
    )
    lab.procs.append(proc)
    return proc


class Load:
    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.client.get(URL)
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
                continue
            if response.status_code == 200:
                self.counts[response.json()["version"]] += 1
            else:
                self.failures.append(str(response.status_code))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_registered_workloads_serve_the_split_and_leave_cleanly(
    lab: LocalMesh, plane: Plane
) -> None:
    a = start_workload(lab, plane, "reviews-a", "v1")
    b = start_workload(lab, plane, "reviews-b", "v1")
    c = start_workload(lab, plane, "reviews-c", "v2")
    all_ports = sorted(p.ready["port"] for p in (a, b, c))
    wait_for(lambda: plane.ports() == all_ports, 10, "three registrations")

    client_bootstrap = Bootstrap.from_file(plane.bootstrap(lab.workdir, "client", "client"))
    with Mesh(client_bootstrap) as mesh, httpx.Client(transport=mesh.httpx_transport()) as client:
        with Load(client) as load:
            wait_for(lambda: min(load.counts["v1"], load.counts["v2"]) > 100, 20, "the split")
            # 50/50 between subsets even though v1 has two instances: the split applies.
            share = load.counts["v2"] / sum(load.counts.values())
            assert 0.35 < share < 0.65, load.counts

            # Clean stop under load: deregister (DRAINING in EDS), drain, then exit.
            # Zero failures.
            port_b = b.ready["port"]
            b.popen.send_signal(signal.SIGTERM)
            wait_for(lambda: plane.eds().get(port_b) == "DRAINING", 5, "b draining in EDS")
            assert b.stop() == 0
            wait_for(lambda: port_b not in plane.eds(), GRACE + 5, "b leaving EDS")
            served = sum(load.counts.values())
            wait_for(lambda: sum(load.counts.values()) > served + 100, 10, "more traffic")
        assert load.failures == []

        # Abrupt kill: out of the endpoints within the grace period.
        # Abrupt kill: UNHEALTHY in EDS at once, gone within the grace period.
        port_a = a.ready["port"]
        killed_at = time.monotonic()
        a.kill()
        wait_for(lambda: plane.eds().get(port_a) != "HEALTHY", 1.0, "a unhealthy")
        assert plane.eds().get(port_a) in ("UNHEALTHY", None)
        wait_for(lambda: port_a not in plane.eds(), GRACE + 1.0, "a leaving")
        assert time.monotonic() - killed_at < GRACE + 1.0
        assert plane.eds() == {c.ready["port"]: "HEALTHY"}


def test_registering_into_another_identitys_group_is_refused(lab: LocalMesh, plane: Plane) -> None:
    # A workload with the `reviews` identity tries to join the `ratings` group.
    proc = start_workload(lab, plane, "impostor", "v1", grp="ratings", sa="reviews")
    reason = proc.ready["refused"]
    assert "PERMISSION_DENIED" in reason
    assert "serviceAccount default/ratings" in reason and "grants default/reviews" in reason
    assert proc.popen.wait(10) == 3
    status = plane.plane.registry.status()["EmbeddedRegistry"]
    assert status["members"] == {} and "impostor" in status["refusals"][0]
