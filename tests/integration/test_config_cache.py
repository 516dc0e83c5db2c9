"""A workload that restarts while the control plane is down starts from the
on-disk copy of its last good config (issue 11), instead of failing."""

from __future__ import annotations

import signal

import httpx
import pytest
from meshlab import LocalMesh

from proxyless_mesh import ControlPlaneUnavailableError, Mesh

HOST = "reviews.default.mesh"
URL = f"http://{HOST}:8080/"


def test_restart_during_an_outage_routes_from_the_disk_cache(lab: LocalMesh) -> None:
    v1 = lab.start_http_backend("reviews", "v1")
    v2 = lab.start_http_backend("reviews", "v2")
    lab.deploy_versions(HOST, 8080, {"v1": v1, "v2": v2}, {"v1": 0, "v2": 100})
    cp = lab.start_control_plane()
    bootstrap = lab.bootstrap("cached-client")
    with Mesh.from_bootstrap(bootstrap, preload=[f"{HOST}:8080"]) as mesh:
        client = httpx.Client(transport=mesh.httpx_transport())
        assert client.get(URL).json()["version"] == "v2"
    # Closing the mesh flushed the cache. Now the control plane goes away...
    cp.stop(signal.SIGKILL)
    lab.procs.remove(cp)
    # ...and the workload restarts: it must route as before, from the cache.
    with Mesh.from_bootstrap(bootstrap, ready_timeout=1.0) as mesh:
        assert not mesh.xds.connected
        client = httpx.Client(transport=mesh.httpx_transport())
        assert {client.get(URL).json()["version"] for _ in range(20)} == {"v2"}


def test_without_a_cache_an_outage_at_start_is_an_error(lab: LocalMesh) -> None:
    backend = lab.start_http_backend("reviews", "v1")
    lab.deploy_versions(HOST, 8080, {"v1": backend}, {"v1": 100})
    cp = lab.start_control_plane()
    bootstrap = lab.bootstrap("never-connected")
    cp.stop(signal.SIGKILL)
    lab.procs.remove(cp)
    with pytest.raises(ControlPlaneUnavailableError):
        Mesh.from_bootstrap(bootstrap, ready_timeout=1.0).start()
