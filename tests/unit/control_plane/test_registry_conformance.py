"""One registry conformance suite, run against every backend.

Static YAML (ServiceEntry + WorkloadEntries through the real loader), the embedded
self-registration registry (registrations + ADS stream liveness), and the Consul
backend against the Consul double (real HTTP, blocking queries), and the Kubernetes
backend against a real API server (tests/kube.py: Pods marked Ready through the
status subresource, EndpointSlices written by the real controller). Each driver turns
the same abstract operations into its backend's terms; every test then reads the
`Registry` the translator would get (`RegistryHub.build`).

"Served" means HEALTHY. A backend that `keeps_leaving` instances (embedded) lists one
that is going away with its status (DRAINING after a clean removal, UNHEALTHY after
a lost stream) until its grace period ends; the others (Consul: only passing
instances are endpoints; Kubernetes: a not-ready or force-deleted Pod is no endpoint)
drop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from mesh_control_plane.config import ConfigLoadError, MeshConfig, parse_documents
from mesh_control_plane.kube.client import connection_from
from mesh_control_plane.registry.consul import ConsulRegistry, ConsulSettings
from mesh_control_plane.registry.embedded import EmbeddedRegistry, RegistrationRequest
from mesh_control_plane.registry.hub import RegistryHub
from mesh_control_plane.registry.kubernetes import KubernetesRegistry, KubernetesSettings
from mesh_control_plane.registry.static import Registry
from mesh_control_plane.registry.workload_group import WorkloadGroup

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from consul_double import ConsulDouble
from kube import KubeCluster, pod_manifest, set_pod_ready

HOST = "reviews.default.svc"


def service_entry(selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {
            "location": "MESH_INTERNAL",
            "hosts": [HOST],
            "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC",
            "workloadSelector": {"labels": selector},
        },
    }


class Driver:
    """The abstract operations; `changed` is set whenever the backend changes."""

    name = ""
    has_health = True
    keeps_leaving = False

    def __init__(self) -> None:
        self.hub = RegistryHub()
        self.config = MeshConfig()
        self.changed = asyncio.Event()

    def registry(self) -> Registry:
        return self.hub.build(self.hub.augment(self.config))

    async def until(self, check: Callable[[Registry], bool], timeout: float = 5.0) -> Registry:
        """Wait (on change events) until `check(registry)` holds."""
        async with asyncio.timeout(timeout):
            while not check(reg := self.registry()):
                self.changed.clear()
                await self.changed.wait()
        return reg

    def notify(self) -> None:
        self.changed.set()


class StaticDriver(Driver):
    name = "static"
    has_health = False

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[str, dict[str, Any]] = {}
        self.broken = False
        self.config = self._load()

    def _load(self) -> MeshConfig:
        docs: list[tuple[str, object]] = [("se.yaml", service_entry({"app": "reviews"}))]
        for name, spec in self.entries.items():
            docs.append(
                (
                    f"{name}.yaml",
                    {
                        "apiVersion": "networking.istio.io/v1",
                        "kind": "WorkloadEntry",
                        "metadata": {"name": name, "namespace": "default"},
                        "spec": spec,
                    },
                )
            )
        if self.broken:
            docs.append(("bad.yaml", {"kind": "WorkloadEntry", "metadata": {"name": "x"}}))
        return parse_documents(docs)

    def _apply(self) -> None:
        # The watcher's rule: a config that does not load keeps the last good one.
        with contextlib.suppress(ConfigLoadError):
            self.config = self._load()
        self.notify()

    async def add(
        self, name: str, address: str, port: int, labels: dict[str, str], loc: str = ""
    ) -> None:
        self.entries[name] = {
            "address": address,
            "ports": {"http": port},
            "labels": {"app": "reviews", **labels},
            "locality": loc,
        }
        self._apply()

    async def remove(self, name: str) -> None:
        del self.entries[name]
        self._apply()

    async def set_healthy(self, name: str, healthy: bool) -> None:
        raise NotImplementedError

    async def set_labels(self, name: str, labels: dict[str, str]) -> None:
        self.entries[name]["labels"] = {"app": "reviews", **labels}
        self._apply()

    async def break_source(self) -> None:
        self.broken = True
        self._apply()

    async def heal_source(self) -> None:
        self.broken = False
        self._apply()

    async def close(self) -> None:
        pass


class EmbeddedDriver(Driver):
    name = "embedded"
    keeps_leaving = True

    def __init__(self) -> None:
        super().__init__()
        group = WorkloadGroup("default", "reviews", labels={"app": "reviews"}, service_account="sa")
        self.groups = [group]
        self.reg = EmbeddedRegistry(
            lambda: self.groups, self._verify, grace=30.0, on_change=self.notify
        )
        self.hub.sources = [self.reg]
        self.config = parse_documents([("se.yaml", service_entry({"app": "reviews"}))])
        self.requests: dict[str, RegistrationRequest] = {}

    @staticmethod
    def _verify(token: str) -> tuple[str, str]:
        if token != "good":
            raise ValueError("the join token's signature is invalid")
        return ("default", "sa")

    async def add(
        self, name: str, address: str, port: int, labels: dict[str, str], loc: str = ""
    ) -> None:
        req = RegistrationRequest(
            name, "default/reviews", address, {"http": port}, labels, loc, "good"
        )
        self.requests[name] = req
        self.reg.register(req)
        self.reg.stream_opened(name)

    async def remove(self, name: str) -> None:
        self.reg.deregister(name)

    async def set_healthy(self, name: str, healthy: bool) -> None:
        if healthy:
            self.reg.stream_opened(name)
        else:
            self.reg.stream_closed(name)

    async def set_labels(self, name: str, labels: dict[str, str]) -> None:
        old = self.requests[name]
        req = RegistrationRequest(
            name, old.group, old.address, old.ports, labels, old.locality, "good"
        )
        self.reg.register(req)

    async def break_source(self) -> None:
        self.groups = []  # the group disappears: new registrations are refused
        with pytest.raises(Exception, match="no WorkloadGroup"):
            self.reg.register(RegistrationRequest("x", "default/reviews", "10.9.9.9", token="good"))

    async def heal_source(self) -> None:
        self.groups = [
            WorkloadGroup("default", "reviews", labels={"app": "reviews"}, service_account="sa")
        ]

    async def close(self) -> None:
        self.reg.close()


class ConsulDriver(Driver):
    name = "consul"

    def __init__(self) -> None:
        super().__init__()
        self.double = ConsulDouble(token="secret")
        self.ids: dict[str, str] = {}
        self.consul: ConsulRegistry | None = None

    async def start(self) -> None:
        address = self.double.start()
        settings = ConsulSettings(
            address=address, token="secret", wait="2s", backoff_initial=0.05, backoff_max=0.2
        )
        self.consul = ConsulRegistry(settings, on_change=self.notify)
        self.hub.sources = [self.consul]
        self.config = parse_documents([("se.yaml", service_entry({"consul.service": "reviews"}))])
        await self.consul.start()

    async def add(
        self, name: str, address: str, port: int, labels: dict[str, str], loc: str = ""
    ) -> None:
        region, _, zone = loc.partition("/")
        node_meta = {"region": region, "zone": zone} if loc else {}
        tags = [f"{k}={v}" for k, v in labels.items()]
        self.ids[name] = await asyncio.to_thread(
            self.double.register, "reviews", address, port, id=name, tags=tags, node_meta=node_meta
        )

    async def remove(self, name: str) -> None:
        await asyncio.to_thread(self.double.deregister, self.ids[name])

    async def set_healthy(self, name: str, healthy: bool) -> None:
        await asyncio.to_thread(
            self.double.update, name, status="passing" if healthy else "critical"
        )

    async def set_labels(self, name: str, labels: dict[str, str]) -> None:
        await asyncio.to_thread(
            self.double.update, name, tags=[f"{k}={v}" for k, v in labels.items()]
        )

    async def break_source(self) -> None:
        await asyncio.to_thread(self.double.stop)

    async def heal_source(self) -> None:
        await asyncio.to_thread(self.double.start)

    async def close(self) -> None:
        if self.consul is not None:
            await self.consul.stop()
        self.double.close()


class KubernetesDriver(Driver):
    """A Service `reviews` selecting `app: reviews` in a namespace of its own; an
    instance is a Pod bound to a Node (whose topology labels are the locality) and
    marked Ready with its podIP through the status subresource."""

    name = "kubernetes"

    def __init__(self, cluster: KubeCluster, namespace: str) -> None:
        super().__init__()
        self.cluster = cluster
        self.ns = namespace
        self.host = f"reviews.{namespace}.svc.cluster.local"
        self.api = cluster.client()
        self.labels: dict[str, dict[str, str]] = {}
        self.addresses: dict[str, str] = {}
        self.kube: KubernetesRegistry | None = None

    def registry(self) -> Registry:
        # The host is the Service's: seen under the suite's HOST name.
        return {HOST: super().registry().get(self.host, ())}

    async def until(self, check: Callable[[Registry], bool], timeout: float = 5.0) -> Registry:
        """Also wait until no deleted Pod is listed: a deletion passes through
        "terminating" (DRAINING) on its way, which the suite must not catch."""
        live = lambda r: {i.address for i in r.get(HOST, ())} <= set(self.addresses.values())  # noqa: E731
        return await super().until(lambda r: check(r) and live(r), timeout)

    def _call(self, method: str, path: str, body: Any = None, patch: bool = False) -> None:
        headers = {"Content-Type": "application/merge-patch+json"} if patch else {}
        response = self.api.request(method, path, json=body, headers=headers)
        assert response.is_success, f"{method} {path}: {response.text}"

    async def call(self, method: str, path: str, body: Any = None, patch: bool = False) -> None:
        await asyncio.to_thread(self._call, method, path, body, patch)

    async def start(self) -> None:
        ns = self.ns
        await self.call("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
        await self.call(
            "POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "reviews"}}
        )
        await self.call("POST", "/api/v1/nodes", {"metadata": {"name": f"{ns}-node"}})
        service = {
            "metadata": {"name": "reviews"},
            "spec": {
                "selector": {"app": "reviews"},
                "ports": [{"name": "http", "port": 9080, "targetPort": "http"}],
            },
        }
        await self.call("POST", f"/api/v1/namespaces/{ns}/services", service)
        settings = KubernetesSettings(namespaces=(ns,), backoff_initial=0.05, backoff_max=0.5)
        connection = connection_from(str(self.cluster.kubeconfig))
        self.kube = KubernetesRegistry(connection, settings, on_change=self.notify)
        self.hub.sources = [self.kube]
        await self.kube.start()

    async def add(
        self, name: str, address: str, port: int, labels: dict[str, str], loc: str = ""
    ) -> None:
        ns, node = self.ns, f"{self.ns}-node"
        if loc:
            region, _, zone = loc.partition("/")
            node = f"{ns}-{name}"
            topology = {
                "topology.kubernetes.io/region": region,
                "topology.kubernetes.io/zone": zone,
            }
            await self.call(
                "POST", "/api/v1/nodes", {"metadata": {"name": node, "labels": topology}}
            )
        self.labels[name] = {"app": "reviews", **labels}
        self.addresses[name] = address
        pod = pod_manifest(ns, name, self.labels[name], port, node, "reviews")
        await self.call("POST", f"/api/v1/namespaces/{ns}/pods", pod)
        await asyncio.to_thread(set_pod_ready, self.api, ns, name, True, address)

    async def remove(self, name: str) -> None:
        """A force delete (no kubelet would ever confirm a graceful one). The API
        server marks the Pod terminating first (its endpoint DRAINING for a moment),
        then removes it: return once it is gone, so the suite sees the end state."""
        path = f"/api/v1/namespaces/{self.ns}/pods/{name}"
        del self.addresses[name]
        await self.call("DELETE", f"{path}?gracePeriodSeconds=0")
        async with asyncio.timeout(10):
            while (await asyncio.to_thread(self.api.get, path)).status_code != 404:
                await asyncio.sleep(0.05)

    async def set_healthy(self, name: str, healthy: bool) -> None:
        address = self.addresses[name]
        await asyncio.to_thread(set_pod_ready, self.api, self.ns, name, healthy, address)

    async def set_labels(self, name: str, labels: dict[str, str]) -> None:
        new: dict[str, str | None] = {"app": "reviews", **labels}
        new.update({k: None for k in self.labels[name] if k not in new})
        self.labels[name] = {"app": "reviews", **labels}
        path = f"/api/v1/namespaces/{self.ns}/pods/{name}"
        await self.call("PATCH", path, {"metadata": {"labels": new}}, True)

    async def break_source(self) -> None:
        await asyncio.to_thread(self.cluster.stop_apiserver)

    async def heal_source(self) -> None:
        await asyncio.to_thread(self.cluster.start_apiserver)
        self.api.close()  # its pooled connections went with the old process
        self.api = self.cluster.client()

    async def close(self) -> None:
        if self.kube is not None:
            await self.kube.stop()
        with contextlib.suppress(AssertionError):  # best effort: the cluster is the test's
            await self.call("DELETE", f"/api/v1/namespaces/{self.ns}")
        self.api.close()


_namespaces = iter(range(1, 1_000_000))


@pytest.fixture(params=["static", "embedded", "consul", "kubernetes"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Driver]:
    driver: Driver
    if request.param == "static":
        driver = StaticDriver()
    elif request.param == "embedded":
        driver = EmbeddedDriver()
    elif request.param == "consul":
        consul = ConsulDriver()
        await consul.start()
        driver = consul
    else:
        cluster = request.getfixturevalue("kube")
        kube = KubernetesDriver(cluster, f"conformance-{next(_namespaces)}")
        await kube.start()
        driver = kube
    try:
        yield driver
    finally:
        await driver.close()  # type: ignore[attr-defined]


def addresses(reg: Registry) -> list[str]:
    """The served (HEALTHY) instances."""
    return sorted(i.address for i in reg.get(HOST, ()) if i.health == "HEALTHY")


def health(reg: Registry) -> dict[str, str]:
    """address -> health of every listed instance, served or not."""
    return {i.address: i.health for i in reg.get(HOST, ())}


async def test_add(backend: Any) -> None:
    await backend.add("a", "10.0.0.1", 9001, {"version": "v1"})
    await backend.add("b", "10.0.0.2", 9002, {"version": "v2"})
    reg = await backend.until(lambda r: addresses(r) == ["10.0.0.1", "10.0.0.2"])
    ports = {i.address: list(i.ports.values()) for i in reg[HOST]}
    assert ports == {"10.0.0.1": [9001], "10.0.0.2": [9002]}


async def test_remove(backend: Any) -> None:
    await backend.add("a", "10.0.0.1", 9001, {"version": "v1"})
    await backend.add("b", "10.0.0.2", 9002, {"version": "v1"})
    await backend.until(lambda r: len(addresses(r)) == 2)
    await backend.remove("a")
    reg = await backend.until(lambda r: addresses(r) == ["10.0.0.2"])
    if backend.keeps_leaving:
        assert health(reg) == {"10.0.0.1": "DRAINING", "10.0.0.2": "HEALTHY"}
    else:
        assert health(reg) == {"10.0.0.2": "HEALTHY"}


async def test_health_change(backend: Any) -> None:
    if not backend.has_health:
        pytest.skip("static YAML has no health: an instance is whatever the file says")
    await backend.add("a", "10.0.0.1", 9001, {"version": "v1"})
    await backend.add("b", "10.0.0.2", 9002, {"version": "v1"})
    await backend.until(lambda r: len(addresses(r)) == 2)
    await backend.set_healthy("a", False)
    reg = await backend.until(lambda r: addresses(r) == ["10.0.0.2"])
    if backend.keeps_leaving:
        assert health(reg) == {"10.0.0.1": "UNHEALTHY", "10.0.0.2": "HEALTHY"}
    else:
        assert health(reg) == {"10.0.0.2": "HEALTHY"}
    await backend.set_healthy("a", True)
    reg = await backend.until(lambda r: addresses(r) == ["10.0.0.1", "10.0.0.2"])
    assert health(reg) == {"10.0.0.1": "HEALTHY", "10.0.0.2": "HEALTHY"}


async def test_label_change(backend: Any) -> None:
    await backend.add("a", "10.0.0.1", 9001, {"version": "v1"})
    await backend.until(lambda r: [i.labels.get("version") for i in r.get(HOST, ())] == ["v1"])
    await backend.set_labels("a", {"version": "v2"})
    reg = await backend.until(
        lambda r: [i.labels.get("version") for i in r.get(HOST, ())] == ["v2"]
    )
    assert reg[HOST][0].address == "10.0.0.1"


async def test_locality(backend: Any) -> None:
    await backend.add("a", "10.0.0.1", 9001, {"version": "v1"}, "eu-west/eu-west-1a")
    reg = await backend.until(lambda r: len(addresses(r)) == 1)
    assert reg[HOST][0].locality == "eu-west/eu-west-1a"


async def test_large_list(backend: Any) -> None:
    count = 300
    for n in range(count):
        await backend.add(f"w{n}", f"10.1.{n // 250}.{n % 250 + 1}", 9000, {"version": "v1"})
    reg = await backend.until(lambda r: len(addresses(r)) == count, timeout=20)
    assert addresses(reg) == sorted(addresses(reg))  # deterministic order


async def test_watch_after_error(backend: Any) -> None:
    await backend.add("a", "10.0.0.1", 9001, {"version": "v1"})
    await backend.until(lambda r: addresses(r) == ["10.0.0.1"])
    await backend.break_source()
    # While broken, the last known instances stay: the mesh is never emptied.
    assert addresses(backend.registry()) == ["10.0.0.1"]
    await backend.heal_source()
    await backend.add("b", "10.0.0.2", 9002, {"version": "v1"})
    await backend.until(lambda r: addresses(r) == ["10.0.0.1", "10.0.0.2"], timeout=10)
