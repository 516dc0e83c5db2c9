"""Several control planes: a client bootstrap listing two xds_servers (gRPC A71).

Two real `meshctl control-plane` replicas serve the same config directory; the
client uses the first. Killing it (SIGKILL) under load must not fail a request,
the client must move to the second, a config change made while there must reach
it, and when a control plane is back on the primary's address the client returns.
"""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import closing

import httpx
from meshlab import LocalMesh
from registration_plane import wait_for
from relay import Relay, bootstrap_for

from proxyless_mesh import Mesh

HOST = "reviews.default.mesh"
URL = f"http://{HOST}:8080/reviews"


class Load:
    """Requests in a loop on a thread; counts outcomes by version."""

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
            if response.status_code != 200:
                self.failures.append(str(response.status_code))
            else:
                self.counts[response.json()["version"]] += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_client_fails_over_and_returns_to_the_primary(lab: LocalMesh) -> None:
    v1 = lab.start_http_backend("reviews", "v1")
    v2 = lab.start_http_backend("reviews", "v2")
    lab.deploy_versions(HOST, 8080, {"v1": v1, "v2": v2}, {"v1": 100, "v2": 0})
    primary = lab.start_control_plane()
    # The primary comes back on a port of its own, behind the address the
    # bootstrap lists first (a Service address in a deployment).
    relay = Relay(str(primary.ready["xds"]))
    primary_address = relay.address
    secondary = lab.start_control_plane()
    secondary_address = str(secondary.ready["xds"])
    bootstrap = bootstrap_for(lab, "client-1", [primary_address, secondary_address])

    with (
        closing(relay),
        Mesh(bootstrap) as mesh,
        httpx.Client(transport=mesh.httpx_transport()) as client,
        Load(client) as load,
    ):
        wait_for(lambda: load.counts["v1"] > 50, 10, "traffic to v1")
        assert mesh.xds.server_uri == primary_address

        primary.kill()
        wait_for(
            lambda: mesh.xds.connected and mesh.xds.server_uri == secondary_address,
            10,
            "failover to the second control plane",
        )
        served_before = sum(load.counts.values())
        wait_for(lambda: sum(load.counts.values()) > served_before + 50, 10, "more traffic")

        lab.set_weights(HOST, {"v1": 0, "v2": 100})  # a change while on the second
        wait_for(lambda: load.counts["v2"] > 50, 10, "the change made on the second")

        # A control plane is back at the primary's address: the client goes home.
        relay.point_at(str(lab.start_control_plane().ready["xds"]))
        wait_for(
            lambda: mesh.xds.connected and mesh.xds.server_uri == primary_address,
            15,
            "return to the primary",
        )
        served_before = sum(load.counts.values())
        wait_for(lambda: sum(load.counts.values()) > served_before + 50, 10, "traffic after")
    assert load.failures == []
