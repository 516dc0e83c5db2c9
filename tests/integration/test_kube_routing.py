"""Acceptance on a real Kubernetes API server (tests/kube.py): Istio configuration
as custom resources applied with the built kubectl, endpoints from real
EndpointSlices, a real control plane (`meshctl control-plane --kubeconfig`) and a
meshed httpx client calling real uvicorn backends.

The Service `reviews` in namespace `shop` selects three Pods (no kubelet: each is
bound to a Node and marked Ready through the status subresource with an address of
its own in a network namespace the test makes, where its backend listens; the API
server refuses loopback endpoints): v1a and v1b
(label version=v1) and v2. A DestinationRule names the subsets by version.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from kube import KubeCluster, PodNetwork, pod_manifest, pod_network, set_pod_ready
from meshlab import HERE as EXAMPLES
from meshlab import LocalMesh, start_process
from stats import assert_binomial

from proxyless_mesh import Mesh
from proxyless_mesh.errors import MeshRequestError

NS = "shop"
HOST = f"reviews.{NS}.svc.cluster.local"
URL = f"http://{HOST}:9080/reviews"
N = 1000  # 80/20 at 5 sigma (tests/stats.py): v2 in [137, 263]
CHANGE_LIMIT = 10.0  # seconds for a kubectl apply to reach the client
NOT_READY_LIMIT = 10.0  # seconds for a not-ready Pod to stop receiving requests
OUTAGE = 30.0  # seconds the API server is stopped under load
RATE = 200  # requests per second during the outage
CHANGE_AFTER_OUTAGE = 20.0  # seconds for a change made after it returns to arrive


def meshctl() -> str:
    return str(Path(sys.executable).parent / "meshctl")


def virtual_service(weights: dict[str, int], **extra: Any) -> dict[str, Any]:
    route = [
        {"destination": {"host": "reviews", "subset": subset}, "weight": weight}
        for subset, weight in weights.items()
    ]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": NS},
        "spec": {"hosts": ["reviews"], "http": [{"route": route, **extra}]},
    }


@dataclass
class Shop:
    lab: LocalMesh
    kube: KubeCluster
    bootstrap: Path
    addresses: dict[str, str]  # Pod name -> its address

    def set_ready(self, api: httpx.Client, pod: str, ready: bool) -> None:
        set_pod_ready(api, NS, pod, ready, self.addresses[pod])


@pytest.fixture(scope="module")
def shop(kube: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    subprocess.run([meshctl(), "install", "--kubeconfig", str(kube.kubeconfig)], check=True)
    lab = LocalMesh(tmp_path_factory.mktemp("kube-shop"))
    with pod_network() as network:
        try:
            yield _deploy(lab, kube, network)
        finally:
            lab.close()


def _deploy(lab: LocalMesh, kube: KubeCluster, network: PodNetwork) -> Shop:
    pods = {"reviews-v1a": "v1", "reviews-v1b": "v1", "reviews-v2": "v2"}
    addresses, ports = {}, {}
    for name in pods:
        addresses[name] = address = network.new_address()
        argv = [*network.argv_prefix, sys.executable, str(EXAMPLES / "backend.py")]
        version = name.removeprefix("reviews-")  # what the backend answers: v1a, v1b, v2
        proc = start_process(
            name,
            [*argv, "--service", "reviews", "--version", version, "--host", address],
            lab.workdir,
        )
        lab.procs.append(proc)
        ports[name] = proc.ready["port"]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "reviews", "namespace": NS},
        "spec": {
            "selector": {"app": "reviews"},
            "ports": [{"name": "http", "port": 9080, "targetPort": "http"}],
        },
    }
    kube.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"{NS}-node"}},
    )
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "reviews", "namespace": NS},
        },
        service,
        *(
            pod_manifest(
                NS, name, {"app": "reviews", "version": v}, ports[name], f"{NS}-node", "reviews"
            )
            for name, v in pods.items()
        ),
    )
    shop = Shop(lab, kube, Path(), addresses)
    with kube.client() as api:
        for name in pods:
            shop.set_ready(api, name, True)
    rule = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": NS},
        "spec": {
            "host": "reviews",
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}},
            ],
        },
    }
    kube.apply(rule, virtual_service({"v1": 80, "v2": 20}))
    lab.start_control_plane(
        extra_args=["--kubeconfig", str(kube.kubeconfig), "--kube-namespace", NS]
    )
    shop.bootstrap = lab.bootstrap("client-1", namespace=NS)
    return shop


@contextlib.contextmanager
def meshed(bootstrap: Path) -> Iterator[httpx.Client]:
    """An httpx client through a Mesh of its own (the workload's view)."""
    with (
        Mesh.from_bootstrap(bootstrap) as mesh,
        httpx.Client(transport=mesh.httpx_transport()) as client,
    ):
        yield client


def versions(client: httpx.Client, n: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(n):
        response = client.get(URL)
        assert response.status_code == 200, response.text
        counts[response.json()["version"]] += 1
    return counts


def wait_until(client: httpx.Client, ok: Any, window: int, limit: float) -> float:
    """Seconds until `window` consecutive responses satisfy `ok(version)`."""
    start = time.monotonic()
    streak = 0
    while streak < window:
        if time.monotonic() - start > limit:
            raise AssertionError(f"no {window} consecutive good responses within {limit} s")
        try:
            response = client.get(URL)
        except MeshRequestError:  # e.g. endpoints not written yet by the controller
            streak = 0
            continue
        streak = streak + 1 if response.status_code == 200 and ok(response.json()["version"]) else 0
    return time.monotonic() - start


def test_virtual_service_from_kubectl_splits_80_20_and_changes_reach_the_client(
    shop: Shop,
) -> None:
    kube, bootstrap = shop.kube, shop.bootstrap
    kube.apply(virtual_service({"v1": 80, "v2": 20}))
    with meshed(bootstrap) as client:
        wait_until(client, lambda v: v in ("v1a", "v1b", "v2"), window=5, limit=CHANGE_LIMIT)
        counts = versions(client, N)
        assert set(counts) <= {"v1a", "v1b", "v2"}
        assert_binomial(counts["v2"], N, 0.20, f"v2 of the 80/20 split {counts}")

        kube.apply(virtual_service({"v1": 0, "v2": 100}))
        took = wait_until(client, lambda v: v == "v2", window=30, limit=CHANGE_LIMIT)
        print(f"kubectl apply -> full switch to v2: {took * 1000:.0f} ms")
        assert versions(client, 200) == Counter({"v2": 200})


def test_a_pod_turned_not_ready_stops_receiving(
    shop: Shop,
) -> None:
    kube, bootstrap = shop.kube, shop.bootstrap
    kube.apply(virtual_service({"v1": 100, "v2": 0}))
    with meshed(bootstrap) as client, kube.client() as api:
        wait_until(client, lambda v: v in ("v1a", "v1b"), window=30, limit=CHANGE_LIMIT)
        both = versions(client, 200)
        assert both["v1a"] > 0 and both["v1b"] > 0, both  # round robin over the subset
        shop.set_ready(api, "reviews-v1b", False)
        try:
            took = wait_until(client, lambda v: v == "v1a", window=50, limit=NOT_READY_LIMIT)
            print(f"Pod not ready -> no more requests: {took * 1000:.0f} ms")
            assert versions(client, 200) == Counter({"v1a": 200})
        finally:
            shop.set_ready(api, "reviews-v1b", True)


def accepted(kube: KubeCluster) -> dict[str, Any]:
    out = kube.kubectl("get", "virtualservice", "reviews", "-n", NS, "-o", "json")
    conditions = json.loads(out).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "Accepted"), {})


def test_invalid_virtual_service_gets_a_status_and_clients_keep_routing(
    shop: Shop,
) -> None:
    kube, bootstrap = shop.kube, shop.bootstrap
    kube.apply(virtual_service({"v1": 0, "v2": 100}))
    with meshed(bootstrap) as client:
        wait_until(client, lambda v: v == "v2", window=30, limit=CHANGE_LIMIT)
        deadline = time.monotonic() + CHANGE_LIMIT
        while accepted(kube).get("status") != "True":
            assert time.monotonic() < deadline, accepted(kube)
            time.sleep(0.1)

        # 100 % to v1 but with a field Istio does not have: the whole resource is
        # refused, and the previous version (100 % to v2) keeps serving.
        kube.apply(virtual_service({"v1": 100, "v2": 0}, frobnicate=True))
        while accepted(kube).get("status") != "False":
            assert time.monotonic() < deadline + CHANGE_LIMIT, accepted(kube)
            time.sleep(0.1)
        condition = accepted(kube)
        assert condition["reason"] == "Invalid"
        assert "spec.http[0].frobnicate" in condition["message"], condition
        table = kube.kubectl("get", "virtualservice", "reviews", "-n", NS)
        assert "False" in table and "Invalid" in table, table  # kubectl get shows it
        events = kube.kubectl(
            "get",
            "events",
            "-n",
            NS,
            "--field-selector",
            "involvedObject.name=reviews",
            "-o",
            "json",
        )
        messages = [e["message"] for e in json.loads(events)["items"] if e["reason"] == "Rejected"]
        assert any("spec.http[0].frobnicate" in m for m in messages), messages
        source = httpx.get(f"http://{shop.lab.admin_address}/registry").json()["KubeConfigSource"]
        # (other tests' namespaces share the session's API server)
        mine = [name for name in source["rejected"] if f"/{NS}/" in name]
        assert mine == [f"VirtualService/{NS}/reviews"], source
        assert source["leader"] is True, source
        assert versions(client, 200) == Counter({"v2": 200})

        kube.apply(virtual_service({"v1": 100, "v2": 0}))  # fixed: applies, and is accepted
        wait_until(client, lambda v: v in ("v1a", "v1b"), window=30, limit=CHANGE_LIMIT)
        assert accepted(kube).get("status") == "True"


def test_api_server_down_30_s_under_load_fails_no_request_and_changes_arrive_after(
    shop: Shop,
) -> None:
    """200 req/s through the mesh while the API server is stopped for OUTAGE
    seconds: the control plane keeps the last known endpoints and routes (no
    request fails), and a VirtualService applied after the API server returns
    reaches the client within CHANGE_AFTER_OUTAGE (the control plane's watches back
    off up to 10 s while it is away)."""
    kube, bootstrap = shop.kube, shop.bootstrap
    kube.apply(virtual_service({"v1": 100, "v2": 0}))
    results: Counter[str] = Counter()
    stop = threading.Event()
    with meshed(bootstrap) as client:
        wait_until(client, lambda v: v in ("v1a", "v1b"), window=30, limit=CHANGE_LIMIT)

        def load() -> None:
            next_at = time.monotonic()
            while not stop.is_set():
                try:
                    response = client.get(URL)
                    results["ok" if response.status_code == 200 else str(response.status_code)] += 1
                    results[response.json()["version"]] += 1
                except httpx.HTTPError as exc:
                    results[type(exc).__name__] += 1
                next_at += 1 / RATE
                time.sleep(max(0.0, next_at - time.monotonic()))  # pacing, not waiting

        thread = threading.Thread(target=load)
        thread.start()
        try:
            kube.stop_apiserver()
            stop.wait(OUTAGE)  # the outage itself is what is measured
            down = sum(results.values())
            kube.start_apiserver()
            kube.apply(virtual_service({"v1": 0, "v2": 100}))
            returned = time.monotonic()
            while results["v2"] < 50:
                assert time.monotonic() - returned < CHANGE_AFTER_OUTAGE, results
                time.sleep(0.1)
            print(
                f"change after the outage reached the client in {time.monotonic() - returned:.1f} s"
            )
        finally:
            stop.set()
            thread.join()
    failed = {k: v for k, v in results.items() if k not in ("ok", "v1a", "v1b", "v2")}
    assert failed == {}, results
    assert down >= 0.8 * RATE * OUTAGE, f"the load did not run: {results}"
