"""Pure logic of the Kubernetes backend: protocol rules, EndpointSlice conditions,
kubeconfig reading, and the reflector's relist after 410 (over httpx's
MockTransport: a 410 cannot be summoned from a real API server on demand). The
backend against the real API server is in test_registry_conformance.py and
tests/integration/test_kube_*.py."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from mesh_control_plane.config.model import MeshConfig, Meta, ServiceEntry, ServicePort
from mesh_control_plane.kube.client import KubeConfigError, KubeConnection, connection_from
from mesh_control_plane.kube.reflector import Reflector
from mesh_control_plane.registry.hub import RegistryHub
from mesh_control_plane.registry.kubernetes import (
    KubernetesRegistry,
    _endpoint_slice,
    _service,
    port_protocol,
)
from mesh_control_plane.registry.kubernetes import (
    _pod as pod_of,
)


@pytest.mark.parametrize(
    ("port", "protocol"),
    [
        ({"name": "http-web", "port": 80}, "HTTP"),
        ({"name": "grpc", "port": 80}, "GRPC"),
        ({"name": "http2", "port": 80}, "HTTP2"),
        ({"name": "web", "port": 80, "appProtocol": "http"}, "HTTP"),
        ({"name": "http", "port": 80, "appProtocol": "kubernetes.io/h2c"}, "HTTP2"),
        ({"name": "http", "port": 80, "appProtocol": "grpc"}, "GRPC"),  # appProtocol wins
        ({"name": "web", "port": 80}, None),  # Istio would sniff: the mesh does not
        ({"name": "https", "port": 443}, None),
        ({"name": "http", "port": 53, "protocol": "UDP"}, None),
        ({"name": "x", "port": 80, "appProtocol": "kubernetes.io/ws"}, None),
    ],
)
def test_port_protocol(port: dict[str, Any], protocol: str | None) -> None:
    assert port_protocol(port) == protocol


def _slice(*conditions: dict[str, bool]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web-abc",
            "namespace": "shop",
            "resourceVersion": "1",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {"addresses": [f"10.0.0.{n}"], "conditions": c} for n, c in enumerate(conditions, 1)
        ],
    }


def test_endpoint_conditions() -> None:
    parsed = _endpoint_slice(
        _slice(
            {"ready": True, "serving": True, "terminating": False},
            {"ready": False, "serving": True, "terminating": True},  # draining
            {"ready": False, "serving": False, "terminating": True},  # gone
            {"ready": False, "serving": False, "terminating": False},  # not ready
            {},  # unset conditions: ready (the API's rule)
        )
    )
    assert parsed is not None
    assert parsed.service == "shop/web"
    assert parsed.ports == (("http", 8080),)
    assert [(e.address, e.health) for e in parsed.endpoints] == [
        ("10.0.0.1", "HEALTHY"),
        ("10.0.0.2", "DRAINING"),
        ("10.0.0.5", "HEALTHY"),
    ]


def test_kubeconfig_data_and_token(tmp_path: Path) -> None:
    config = {
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "ns"}}],
        "clusters": [{"name": "k", "cluster": {"server": "https://10.1.2.3:6443"}}],
        "users": [{"name": "u", "user": {"token": "t0k"}}],
    }
    path = tmp_path / "config"
    path.write_text(json.dumps(config))
    connection = connection_from(str(path))
    assert connection.server == "https://10.1.2.3:6443"
    assert connection.headers() == {"Authorization": "Bearer t0k"}
    assert connection.namespace == "ns"

    config["clusters"][0]["cluster"] = {  # type: ignore[index]
        "server": "https://10.1.2.3:6443",
        "certificate-authority-data": base64.b64encode(b"not a certificate").decode(),
    }
    path.write_text(json.dumps(config))
    with pytest.raises(KubeConfigError, match="certificate-authority"):
        connection_from(str(path))  # bad CA data is an error, never "trust anything"

    config["clusters"][0]["cluster"] = {  # type: ignore[index]
        "server": "https://10.1.2.3:6443",
        "insecure-skip-tls-verify": True,
    }
    path.write_text(json.dumps(config))
    with pytest.raises(KubeConfigError, match="insecure-skip-tls-verify"):
        connection_from(str(path))


def _pod(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": version}}


async def test_relist_after_gone_keeps_items_until_the_new_list() -> None:
    """list (a, b) -> watch: 410 -> list (a, c) -> watch: c deleted. The items go
    from {a, b} straight to {a, c}: never empty, never a mix."""
    seen: list[set[str]] = []
    requests: list[str] = []
    lists = iter(
        [
            {"metadata": {"resourceVersion": "5"}, "items": [_pod("a", "1"), _pod("b", "2")]},
            {"metadata": {"resourceVersion": "9"}, "items": [_pod("a", "1"), _pod("c", "8")]},
        ]
    )
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    watches = iter(
        [
            json.dumps(gone) + "\n",
            json.dumps({"type": "DELETED", "object": _pod("c", "10")}) + "\n",
        ]
    )
    done = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        requests.append(str(request.url.params))
        if "watch" not in request.url.params:
            return httpx.Response(200, json=next(lists))
        body = next(watches, None)
        if body is None:
            done.set()
            await asyncio.sleep(3600)
        return httpx.Response(200, content=body.encode())

    reflector = Reflector("/api/v1/pods", lambda o: o["metadata"]["name"], lambda: None)
    reflector.on_change = lambda: seen.append(set(reflector.items))
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(handler), base_url="https://k"
    ) as client:
        task = asyncio.create_task(reflector.run(client))
        async with asyncio.timeout(5):
            await done.wait()
        task.cancel()
    assert seen == [{"ns/a", "ns/b"}, {"ns/a", "ns/c"}, {"ns/a"}]
    assert reflector.resource_version == "10"
    assert "resourceVersion=5" in requests[1] and "allowWatchBookmarks=true" in requests[1]
    assert "resourceVersion=9" in requests[3]


def _object(namespace: str, name: str, **fields: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, **fields.pop("meta", {})}, **fields}


def test_an_endpoint_change_rebuilds_only_its_services_entry() -> None:
    """Entries are kept per Service while its Service and slices are unchanged; a
    Pod change (labels, identity) rebuilds them all. Items are set as the
    reflectors would, then their change callbacks are called."""

    registry = KubernetesRegistry(KubeConnection("https://127.0.0.1:1", False))
    services, slices, pods = registry.services[0], registry.slices[0], registry.pods[0]

    def slice_of(name: str, ready: bool) -> Any:
        return _endpoint_slice(
            _object(
                "shop",
                f"{name}-1",
                meta={"labels": {"kubernetes.io/service-name": name}},
                addressType="IPv4",
                ports=[{"name": "http", "port": 8080}],
                endpoints=[
                    {
                        "addresses": [f"10.0.0.{len(name)}"],
                        "conditions": {"ready": ready},
                        "targetRef": {"kind": "Pod", "namespace": "shop", "name": f"{name}-pod"},
                    }
                ],
            )
        )

    names = ("web", "cart", "search")
    services.items = {
        f"shop/{n}": _service(_object("shop", n, spec={"ports": [{"name": "http", "port": 80}]}))
        for n in names
    }
    slices.items = {f"shop/{n}-1": slice_of(n, True) for n in names}
    pods.items = {
        f"shop/{n}-pod": pod_of(_object("shop", f"{n}-pod", meta={"labels": {"app": n}}))
        for n in names
    }
    services.on_change()
    first = {e.hosts[0]: e for e in registry.service_entries(MeshConfig())}
    assert len(first) == 3

    slices.items["shop/cart-1"] = slice_of("cart", False)
    slices.on_change()
    second = {e.hosts[0]: e for e in registry.service_entries(MeshConfig())}
    cart = "cart.shop.svc.cluster.local"
    assert second[cart].endpoints == ()  # not ready: not an instance
    assert all(second[h] is first[h] for h in first if h != cart)

    pods.items["shop/web-pod"] = pod_of(
        _object("shop", "web-pod", meta={"labels": {"app": "web", "version": "v2"}})
    )
    pods.on_change()
    third = {e.hosts[0]: e for e in registry.service_entries(MeshConfig())}
    assert third["web.shop.svc.cluster.local"].endpoints[0].labels == {
        "app": "web",
        "version": "v2",
    }


def test_an_external_name_service_is_refused_visibly() -> None:
    """Not served (no DNS clusters here), and said so in the admin /registry."""
    registry = KubernetesRegistry(KubeConnection("https://127.0.0.1:1", False))
    registry.services[0].items = {
        "shop/db": _service(
            _object("shop", "db", spec={"type": "ExternalName", "externalName": "db.example.com"})
        )
    }
    registry.services[0].on_change()
    assert registry.service_entries(MeshConfig()) == []
    (why,) = registry.status()["skipped_ports"]["shop/db"]
    assert "ExternalName" in why and "db.example.com" in why


def test_a_service_entry_workload_selector_selects_ready_pods() -> None:
    """Istio's rule: the ready Pods of the entry's namespace whose labels match;
    a Ready Pod being deleted drains; not ready, other namespace, other labels:
    not selected."""
    registry = KubernetesRegistry(KubeConnection("https://127.0.0.1:1", False))

    def pod(namespace: str, name: str, ip: str, app: str, ready: bool, **meta: Any) -> Any:
        conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
        return pod_of(
            _object(
                namespace,
                name,
                meta={"labels": {"app": app}, **meta},
                spec={"serviceAccountName": "db"},
                status={"phase": "Running", "podIP": ip, "conditions": conditions},
            )
        )

    registry.pods[0].items = {
        "shop/db-0": pod("shop", "db-0", "10.1.0.1", "db", True),
        "shop/db-1": pod("shop", "db-1", "10.1.0.2", "db", False),
        "shop/db-2": pod("shop", "db-2", "10.1.0.3", "db", True, deletionTimestamp="now"),
        "shop/web-0": pod("shop", "web-0", "10.1.0.4", "web", True),
        "other/db-0": pod("other", "db-0", "10.2.0.1", "db", True),
    }
    registry.pods[0].on_change()
    entry = ServiceEntry(
        meta=Meta("ServiceEntry", "db", "shop", "db.yaml"),
        hosts=("db.shop.mesh",),
        ports=(ServicePort(5432, "TCP", "tcp"),),
        workload_selector={"app": "db"},
    )
    built = RegistryHub([registry]).build(MeshConfig(service_entries=(entry,)))
    assert [(i.address, i.health, i.service_account) for i in built["db.shop.mesh"]] == [
        ("10.1.0.1", "HEALTHY", "db"),
        ("10.1.0.3", "DRAINING", "db"),
    ]


def test_headless_per_pod_hosts_from_the_slice_or_the_pod() -> None:
    """The slice's endpoint hostname names the Pod's host; without it, the Pod's
    spec.hostname when its spec.subdomain is this Service; a Service with a
    cluster IP has no per-Pod hosts (as in Kubernetes DNS)."""
    registry = KubernetesRegistry(KubeConnection("https://127.0.0.1:1", False))
    services, slices, pods = registry.services[0], registry.slices[0], registry.pods[0]
    endpoints = [
        {"addresses": ["10.0.0.1"], "hostname": "db-0", "targetRef": {}},
        {"addresses": ["10.0.0.2"], "targetRef": {"kind": "Pod", "namespace": "s", "name": "p2"}},
        {"addresses": ["10.0.0.3"], "targetRef": {"kind": "Pod", "namespace": "s", "name": "p3"}},
    ]
    for name, cluster_ip in (("db", "None"), ("web", "10.96.0.9")):
        services.items[f"s/{name}"] = _service(
            _object(
                "s", name, spec={"clusterIP": cluster_ip, "ports": [{"name": "tcp", "port": 1}]}
            )
        )
        slices.items[f"s/{name}-1"] = _endpoint_slice(
            _object(
                "s",
                f"{name}-1",
                meta={"labels": {"kubernetes.io/service-name": name}},
                addressType="IPv4",
                ports=[{"name": "tcp", "port": 7}],
                endpoints=endpoints,
            )
        )
    pods.items = {
        "s/p2": pod_of(_object("s", "p2", spec={"hostname": "db-1", "subdomain": "db"})),
        "s/p3": pod_of(_object("s", "p3", spec={"hostname": "db-9", "subdomain": "elsewhere"})),
    }
    pods.on_change()
    hosts = {
        e.hosts[0]: [i.address for i in e.endpoints] for e in registry.service_entries(MeshConfig())
    }
    assert hosts == {
        "db.s.svc.cluster.local": ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        "db-0.db.s.svc.cluster.local": ["10.0.0.1"],
        "db-1.db.s.svc.cluster.local": ["10.0.0.2"],
        "web.s.svc.cluster.local": ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
    }
