"""Namespaces in Kubernetes mode: watched beside the custom resources for their
labels only, they reach the loader as `v1 Namespace` documents, so a Gateway
API listener's selector picks routes by them; no status is written on a
Namespace."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mesh_control_plane.config import load_config_dir
from mesh_control_plane.kube.client import KubeConnection
from mesh_control_plane.kube.config_source import KubeConfigSource

GROUP = "gateway.networking.k8s.io"
GATEWAY = {
    "apiVersion": f"{GROUP}/v1",
    "kind": "Gateway",
    "metadata": {"name": "edge", "namespace": "gw", "generation": 1},
    "spec": {
        "gatewayClassName": "proxyless-mesh",
        "listeners": [
            {
                "name": "http",
                "port": 80,
                "protocol": "HTTP",
                "allowedRoutes": {
                    "namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}
                },
            }
        ],
    },
}


def _route(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": namespace, "generation": 1},
        "spec": {
            "parentRefs": [{"name": "edge", "namespace": "gw"}],
            "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}],
        },
    }


def _namespace(name: str, labels: dict[str, str]) -> dict[str, Any]:
    # As the API lists it: no kind on the items, and status the loader must not see.
    return {"metadata": {"name": name, "labels": labels}, "status": {"phase": "Active"}}


def test_namespace_labels_reach_the_loader_and_get_no_status(tmp_path: Path) -> None:
    source = KubeConfigSource(KubeConnection("https://127.0.0.1:1", False))
    namespaces = source.reflectors["Namespace"]
    assert namespaces.path == "/api/v1/namespaces"
    namespaces.items = {
        name: namespaces.transform(_namespace(name, labels))
        for name, labels in (("a1", {"team": "a"}), ("b1", {"team": "b"}))
    }
    source.reflectors["Gateway"].items = {"gw/edge": GATEWAY}
    source.reflectors["HTTPRoute"].items = {f"{ns}/r": _route(ns) for ns in ("a1", "b1")}
    source._changed()
    assert source.status()["rejected"] == []
    config = load_config_dir(tmp_path, extra=source.documents())
    (gateway,) = config.gateways
    # Only team=a's namespace is admitted.
    assert [h.namespace for h in gateway.servers[0].hosts] == ["a1"]
    written: list[str] = []

    async def write(key: str, *args: Any, **kwargs: Any) -> bool:
        written.append(key)
        return True

    source._write = write  # type: ignore[method-assign]
    asyncio.run(source.report(config, ()))
    assert sorted(written) == ["Gateway/gw/edge", "HTTPRoute/a1/r", "HTTPRoute/b1/r"]
