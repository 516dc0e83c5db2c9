"""deploy/kubernetes/control-plane.yaml against the real API server: it passes a
server-side dry run, and its RBAC, applied for real, is enough for a control plane
running as that ServiceAccount (registry watches, custom resources, status writes,
Events, TokenReview) and no more than that."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from kube import KubeCluster
from meshlab import LocalMesh

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "control-plane.yaml"
SA = "system:serviceaccount:proxyless-mesh:control-plane"
NS = "deploytest"
LIMIT = 15.0  # seconds for the control plane to write a verdict


def test_manifest_passes_a_server_side_dry_run(kube: KubeCluster) -> None:
    # A dry run creates no namespace, and the objects in it need one.
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "proxyless-mesh"}})
    out = kube.kubectl("apply", "--dry-run=server", "-f", str(MANIFEST))
    assert "deployment.apps/control-plane created (server dry run)" in out, out
    assert "clusterrole.rbac.authorization.k8s.io/proxyless-mesh-control-plane created" in out


def can_i(kube: KubeCluster, verb: str, resource: str, namespace: str = "") -> bool:
    """`kubectl auth can-i` as the control plane's ServiceAccount (exit 1 means no)."""
    where = ["-n", namespace] if namespace else ["-A"]
    argv = [*kube.kubectl_argv(), "auth", "can-i", verb, resource, "--as", SA, *where]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return done.stdout.strip() == "yes"


def sa_kubeconfig(kube: KubeCluster, path: Path) -> Path:
    return kube.service_account_kubeconfig("proxyless-mesh", "control-plane", path)


def test_rbac_is_enough_for_the_control_plane_and_no_more(
    kube: KubeCluster, tmp_path: Path
) -> None:
    subprocess.run(
        [
            str(Path(sys.executable).parent / "meshctl"),
            "install",
            "--kubeconfig",
            str(kube.kubeconfig),
        ],
        check=True,
        capture_output=True,
    )
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    kinds = (
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    )
    rbac = [d for d in docs if d["kind"] in kinds]
    kube.apply(*rbac)
    assert can_i(kube, "create", "tokenreviews.authentication.k8s.io")
    assert can_i(kube, "watch", "endpointslices.discovery.k8s.io")
    assert can_i(kube, "watch", "namespaces")  # their labels: allowedRoutes selectors
    assert not can_i(kube, "update", "namespaces")
    assert not can_i(kube, "list", "secrets")  # least privilege
    assert not can_i(kube, "patch", "virtualservices.networking.istio.io")  # only their status
    assert not can_i(kube, "delete", "pods")
    own = "proxyless-mesh"
    deadline = time.monotonic() + LIMIT  # the API server's RBAC cache takes the new Role
    while not can_i(kube, "get", "secrets/mesh-ca", own):
        assert time.monotonic() < deadline, "the Role does not grant the CA Secret"
        time.sleep(0.2)
    assert can_i(kube, "update", "leases.coordination.k8s.io/proxyless-mesh-control-plane", own)
    assert not can_i(kube, "get", "secrets/other", own)
    assert can_i(kube, "list", "leases.coordination.k8s.io", own)  # the replicas' verdicts
    assert not can_i(kube, "list", "leases.coordination.k8s.io", "default")
    assert not can_i(kube, "get", "secrets/mesh-ca", "default")

    invalid = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "hosts": ["web"],
            "http": [{"route": [{"destination": {"host": "web"}}], "bogus": 1}],
        },
    }
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}, invalid)
    lab = LocalMesh(tmp_path)
    try:
        config = sa_kubeconfig(kube, tmp_path / "sa.kubeconfig")
        lab.start_control_plane(
            extra_args=[
                "--kubeconfig", str(config),
                "--kube-namespace", NS,
                "--ca-secret", "proxyless-mesh/mesh-ca",
            ]
        )  # fmt: skip
        deadline = time.monotonic() + LIMIT
        while True:
            out = kube.kubectl("get", "virtualservice", "web", "-n", NS, "-o", "json")
            conditions = json.loads(out).get("status", {}).get("conditions", [])
            if conditions:
                break
            assert time.monotonic() < deadline, "no status written by the control plane's identity"
            time.sleep(0.2)
        assert conditions[0]["status"] == "False"
        assert "spec.http[0].bogus" in conditions[0]["message"]
        status = httpx.get(f"http://{lab.admin_address}/registry").json()
        registry = status["KubernetesRegistry"]
        assert registry["stale"] is False
        assert all(w["errors"] == 0 and w["synced"] for w in registry["watches"].values()), registry
        # It publishes its gateway verdicts (for the Lease holder's Programmed) in a
        # Lease of its own, listing the others'.
        while not status["KubeConfigSource"]["gateway_verdicts"]["published"]:
            assert time.monotonic() < deadline, "no gateway verdicts Lease published"
            time.sleep(0.2)
            status = httpx.get(f"http://{lab.admin_address}/registry").json()
        assert status["KubeConfigSource"]["gateway_verdicts"]["errors"] == 0
        own_leases = kube.kubectl(
            "get", "lease", "-n", own, "-l", "proxyless-mesh.io/gateway-verdicts", "-o", "name"
        )
        assert own_leases.strip().startswith("lease.coordination.k8s.io/gateway-verdicts-")
        # The RBAC lets it read the mesh config and the Namespaces (their labels).
        for kind in ("ConfigMap", "Namespace"):
            watch = status["KubeConfigSource"]["watches"][kind]
            assert watch["errors"] == 0 and watch["synced"], (kind, watch)
    finally:
        lab.close()
