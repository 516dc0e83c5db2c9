"""The mesh config in Kubernetes mode: the ConfigMap `istio` of the root
namespace is watched beside the custom resources, so a CUSTOM policy applied
with kubectl finds its extension provider; other ConfigMaps are not kept and
no status is written on a ConfigMap."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml
from mesh_control_plane.config import load_config_dir
from mesh_control_plane.config.model import MeshSettings
from mesh_control_plane.kube.client import KubeConnection
from mesh_control_plane.kube.config_source import KubeConfigSource

PROVIDER = {"name": "sample", "envoyExtAuthzHttp": {"service": "ext-authz.foo", "port": 8000}}


def _config_map(name: str) -> dict[str, Any]:
    # As the API lists it: no kind or apiVersion on the items.
    mesh = yaml.safe_dump({"extensionProviders": [PROVIDER]})
    return {"metadata": {"name": name, "namespace": "mesh-root"}, "data": {"mesh": mesh}}


CUSTOM = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "ext-authz", "namespace": "foo", "generation": 1},
    "spec": {"action": "CUSTOM", "provider": {"name": "sample"}, "rules": [{}]},
}


def test_the_istio_config_map_of_the_root_namespace_is_read(tmp_path: Path) -> None:
    source = KubeConfigSource(
        KubeConnection("https://127.0.0.1:1", False), mesh_config_namespace="mesh-root"
    )
    configmaps = source.reflectors["ConfigMap"]
    assert configmaps.path == "/api/v1/namespaces/mesh-root/configmaps"
    items = {f"mesh-root/{n}": _config_map(n) for n in ("istio", "unrelated")}
    configmaps.items = {
        k: kept for k, v in items.items() if (kept := configmaps.transform(v)) is not None
    }
    assert list(configmaps.items) == ["mesh-root/istio"]  # the other one is not kept
    source.reflectors["AuthorizationPolicy"].items = {"foo/ext-authz": CUSTOM}
    source._changed()
    assert source.status()["rejected"] == []
    config = load_config_dir(
        tmp_path, MeshSettings(root_namespace="mesh-root"), extra=source.documents()
    )
    assert dict(config.extension_providers)["sample"].target == "ext-authz.foo:8000"
    written: list[str] = []

    async def write(key: str, *args: Any, **kwargs: Any) -> bool:
        written.append(key)
        return True

    source._write = write  # type: ignore[method-assign]
    asyncio.run(source.report(config, ()))
    assert written == ["AuthorizationPolicy/foo/ext-authz"]  # none on the ConfigMap
