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

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from mesh_control_plane.xds import server
from mesh_control_plane.xds.native_engine import native_engine_available
from meshlab import LocalMesh
from registration_plane import GRACE, URL, Plane, serve_plane, start_workload, wait_for

from proxyless_mesh import Mesh


# Register/Deregister (unary, on the xDS port): over grpc.aio in one process and
# with ADS workers, and over the native engine with workers (its deployment).
@pytest.fixture(
    params=[("grpc", 1), ("grpc", 2), ("native", 2)],
    ids=["grpc-one process", "grpc-2 ADS workers", "native-2 ADS workers"],
)
def plane(
    lab: LocalMesh, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Plane]:
    """With ADS workers, registration reaches the leader through them and a
    workload's health follows its stream on whichever worker holds it."""
    engine, workers = request.param
    if engine == "native" and not native_engine_available():
        pytest.skip("the native xDS engine is not built (make install, with cargo)")
    monkeypatch.setattr(server, "DEFAULT_XDS_ENGINE", engine)  # as the xds_engine fixture
    monkeypatch.setenv("MESH_XDS_ENGINE", engine)
    yield from serve_plane(lab, Plane.with_groups_dir(lab.workdir, xds_workers=workers))


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

    with (
        Mesh(plane.client_bootstrap(lab.workdir)) as mesh,
        httpx.Client(transport=mesh.httpx_transport()) as client,
    ):
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
