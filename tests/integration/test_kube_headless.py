"""Per-Pod hosts of a headless Service on a real API server, as Kubernetes DNS
and Istio give a StatefulSet's Pods: a Pod whose `spec.subdomain` names the
Service is `<spec.hostname>.<svc>.<ns>.svc.cluster.local` with that one Pod
(the real endpointslice controller writes the hostname into the slice); the
Service's own host keeps every Pod; a Pod of another subdomain and the Pods of a
Service with a cluster IP get no such host; a Pod turning not-ready leaves its host."""

from __future__ import annotations

import asyncio
from typing import Any

from kube import KubeCluster, pod_manifest, set_pod_ready
from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.kube.client import connection_from
from mesh_control_plane.registry.hub import RegistryHub
from mesh_control_plane.registry.kubernetes import KubernetesRegistry, KubernetesSettings

NS = "headless"
DOMAIN = f"{NS}.svc.cluster.local"
PODS = [  # name, hostname, subdomain, address
    ("db-0", "db-0", "db", "10.9.1.1"),
    ("db-1", "db-1", "db", "10.9.1.2"),
    ("db-x", "db-x", "other", "10.9.1.3"),
]


def service(name: str, headless: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"app": "db"},
        "ports": [{"name": "tcp-db", "port": 5432, "targetPort": 8080}],
    }
    if headless:
        spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


async def test_a_headless_services_pods_are_hosts_of_their_own(kube: KubeCluster) -> None:
    kube.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"{NS}-node"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "db", "namespace": NS}},
        service("db", headless=True),
        service("db-clustered", headless=False),
    )
    with kube.client() as api:
        for name, hostname, subdomain, address in PODS:
            manifest = pod_manifest(NS, name, {"app": "db"}, 8080, f"{NS}-node", "db")
            manifest["spec"] |= {"hostname": hostname, "subdomain": subdomain}
            api.post(f"/api/v1/namespaces/{NS}/pods", json=manifest).raise_for_status()
            set_pod_ready(api, NS, name, True, address)
    changed = asyncio.Event()
    registry = KubernetesRegistry(
        connection_from(str(kube.kubeconfig)),
        KubernetesSettings(namespaces=(NS,)),
        on_change=changed.set,
    )
    hub = RegistryHub([registry])

    def addresses() -> dict[str, list[str]]:
        built = hub.build(hub.augment(MeshConfig()))
        return {host: sorted(i.address for i in built[host]) for host in built}

    async def until(expected: dict[str, list[str]]) -> None:
        while (seen := addresses()) != expected:
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), 30)
            except TimeoutError:
                raise AssertionError(f"hosts {seen}, expected {expected}") from None

    everyone = ["10.9.1.1", "10.9.1.2", "10.9.1.3"]
    await registry.start()
    try:
        await asyncio.wait_for(registry.wait_synced(), 30)
        await until(
            {
                f"db.{DOMAIN}": everyone,
                f"db-clustered.{DOMAIN}": everyone,
                f"db-0.db.{DOMAIN}": ["10.9.1.1"],
                f"db-1.db.{DOMAIN}": ["10.9.1.2"],
            }
        )
        entry = next(
            e for e in registry.service_entries(MeshConfig()) if e.hosts[0].startswith("db-0.")
        )
        (instance,) = entry.endpoints
        assert instance.service_account == "db" and instance.ports == {"tcp-db": 8080}

        with kube.client() as api:
            set_pod_ready(api, NS, "db-1", False, "10.9.1.2")
        await until(
            {
                f"db.{DOMAIN}": ["10.9.1.1", "10.9.1.3"],
                f"db-clustered.{DOMAIN}": ["10.9.1.1", "10.9.1.3"],
                f"db-0.db.{DOMAIN}": ["10.9.1.1"],
            }
        )
    finally:
        await registry.stop()
