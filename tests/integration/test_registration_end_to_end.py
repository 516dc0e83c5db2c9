"""Self-registration end to end: no endpoint YAML at all.

A real control plane (in this process, on its own loop and thread, so the test can
read its registry) with a CA and WorkloadGroups; real backend processes that join
with `Mesh(register=Registration(...))`; a mesh client routing through a
VirtualService split. Covers: the split applies to registered instances, an
abruptly killed one leaves within the grace period, a clean stop under load fails
no request, and registering into another identity's group is refused.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from mesh_control_plane.app import ControlPlane
from mesh_control_plane.ca import CaSettings, TokenAuthority
from mesh_control_plane.registry.runtime import RegistrySettings
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

    def __init__(self, workdir: Path) -> None:
        self.config_dir = workdir / "config"
        self.groups_dir = workdir / "groups"
        self.ca_dir = workdir / "mesh-ca"
        for d in (self.config_dir, self.groups_dir):
            d.mkdir()
        (self.config_dir / "reviews.yaml").write_text(
            json.dumps(SERVICE_ENTRY) + "\n---\n" + subsets_rule(HOST, ["v1", "v2"])
        )
        (self.config_dir / "route.yaml").write_text(weighted_route(HOST, {"v1": 50, "v2": 50}))
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
        """The registered instances' ports the translator serves for HOST now."""

        async def read() -> list[int]:
            return sorted(i.ports["http"] for i in self.plane.cache.registry.get(HOST, ()))

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

            # Clean stop under load: deregister, drain, then exit. Zero failures.
            b.stop()
            assert b.popen.returncode == 0
            wait_for(lambda: b.ready["port"] not in plane.ports(), 5, "b leaving")
            served = sum(load.counts.values())
            wait_for(lambda: sum(load.counts.values()) > served + 100, 10, "more traffic")
        assert load.failures == []

        # Abrupt kill: out of the endpoints within the grace period.
        killed_at = time.monotonic()
        a.kill()
        wait_for(lambda: a.ready["port"] not in plane.ports(), GRACE + 1.0, "a leaving")
        assert time.monotonic() - killed_at < GRACE + 1.0
        assert plane.ports() == [c.ready["port"]]


def test_registering_into_another_identitys_group_is_refused(lab: LocalMesh, plane: Plane) -> None:
    # A workload with the `reviews` identity tries to join the `ratings` group.
    proc = start_workload(lab, plane, "impostor", "v1", grp="ratings", sa="reviews")
    reason = proc.ready["refused"]
    assert "PERMISSION_DENIED" in reason
    assert "serviceAccount default/ratings" in reason and "grants default/reviews" in reason
    assert proc.popen.wait(10) == 3
    status = plane.plane.registry.status()["EmbeddedRegistry"]
    assert status["members"] == {} and "impostor" in status["refusals"][0]
