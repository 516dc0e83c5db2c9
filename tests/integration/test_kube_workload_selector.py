"""A ServiceEntry's workloadSelector over real Pods (Istio's rule) on a real API
server: the Ready Pods of the entry's namespace whose labels match are its
instances, with their ServiceAccount; a Pod that is not Ready, one with other
labels and one in another namespace are not; a Pod turning Ready joins."""

from __future__ import annotations

import asyncio

from kube import KubeCluster, pod_manifest, set_pod_ready
from mesh_control_plane.config.model import MeshConfig, Meta, ServiceEntry, ServicePort
from mesh_control_plane.kube.client import connection_from
from mesh_control_plane.registry.hub import RegistryHub
from mesh_control_plane.registry.kubernetes import KubernetesRegistry, KubernetesSettings

NS, OTHER = "selector", "selector-other"
HOST = "db.selector.mesh"
ENTRY = ServiceEntry(
    meta=Meta("ServiceEntry", "db", NS, "db.yaml"),
    hosts=(HOST,),
    ports=(ServicePort(5432, "TCP", "tcp"),),
    workload_selector={"app": "db"},
)


async def test_workload_selector_selects_ready_pods(kube: KubeCluster) -> None:
    pods = [  # namespace, name, app, ready, address
        (NS, "db-0", "db", True, "10.9.0.1"),
        (NS, "db-1", "db", False, "10.9.0.2"),
        (NS, "web-0", "web", True, "10.9.0.3"),
        (OTHER, "db-0", "db", True, "10.9.0.4"),
    ]
    for namespace in (NS, OTHER):
        kube.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "db", "namespace": namespace},
            },
        )
    with kube.client() as api:
        for namespace, name, app, ready, address in pods:
            manifest = pod_manifest(namespace, name, {"app": app}, 8080, "node-x", "db")
            api.post(f"/api/v1/namespaces/{namespace}/pods", json=manifest).raise_for_status()
            set_pod_ready(api, namespace, name, ready, address)
    changed = asyncio.Event()
    registry = KubernetesRegistry(
        connection_from(str(kube.kubeconfig)),
        KubernetesSettings(namespaces=(NS, OTHER)),
        on_change=changed.set,
    )
    hub = RegistryHub([registry])
    await registry.start()
    try:
        await asyncio.wait_for(registry.wait_synced(), 30)
        built = hub.build(MeshConfig(service_entries=(ENTRY,)))
        assert [(i.address, i.service_account) for i in built[HOST]] == [("10.9.0.1", "db")]

        changed.clear()
        with kube.client() as api:
            set_pod_ready(api, NS, "db-1", True, "10.9.0.2")
        while [i.address for i in hub.build(MeshConfig(service_entries=(ENTRY,)))[HOST]] != [
            "10.9.0.1",
            "10.9.0.2",
        ]:
            await asyncio.wait_for(changed.wait(), 30)
            changed.clear()
    finally:
        await registry.stop()
