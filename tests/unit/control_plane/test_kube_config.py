"""Pure logic of configuration from Kubernetes: the generated CRDs, the per-resource
last good version, and the precedence of files. Against a real API server:
tests/integration/test_kube_routing.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mesh_control_plane.config import ConfigLoadError, load_config_dir
from mesh_control_plane.config.documents import PARSERS, parse_document
from mesh_control_plane.config.model import Meta, ServiceEntry, ServicePort, VirtualService
from mesh_control_plane.config.schema import Problems
from mesh_control_plane.kube.client import KubeConnection
from mesh_control_plane.kube.config_source import KubeConfigSource
from mesh_control_plane.kube.crds import KINDS, crds


def test_a_crd_per_supported_kind_with_istio_names() -> None:
    by_name = {d["metadata"]["name"]: d for d in crds()}
    definitions = {
        d["spec"]["names"]["kind"]: d for d in by_name.values() if "istio.io" in d["spec"]["group"]
    }
    assert set(definitions) == set(PARSERS)
    # The Gateway API kinds too, from the same tables (the upstream CRDs are not reachable).
    assert by_name["gateways.networking.istio.io"]["spec"]["names"]["plural"] == "gateways"
    gateway_api = {
        d["spec"]["names"]["kind"]: d
        for d in by_name.values()
        if d["spec"]["group"] == "gateway.networking.k8s.io"
    }
    assert set(gateway_api) == {
        "Gateway",
        "HTTPRoute",
        "GRPCRoute",
        "ReferenceGrant",
        "TLSRoute",
        "TCPRoute",
    }
    # The experimental channel's kinds at its version, as the upstream CRDs serve them.
    assert [v["name"] for v in gateway_api["TLSRoute"]["spec"]["versions"]] == ["v1alpha2"]
    route = gateway_api["HTTPRoute"]["spec"]["versions"][0]
    assert route["name"] == "v1"
    assert "backendRefs" not in route["schema"]["openAPIV3Schema"]["properties"]["spec"].get(
        "properties", {}
    )  # only top-level spec fields are listed
    listed = route["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert set(listed) == {"parentRefs", "hostnames", "rules"}
    listeners = gateway_api["Gateway"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert "listeners" in listeners["properties"]["spec"]["properties"]
    assert (
        definitions["VirtualService"]["metadata"]["name"] == "virtualservices.networking.istio.io"
    )
    assert definitions["ServiceEntry"]["spec"]["names"]["plural"] == "serviceentries"
    assert (
        definitions["AuthorizationPolicy"]["metadata"]["name"]
        == "authorizationpolicies.security.istio.io"
    )
    for definition in definitions.values():
        versions = definition["spec"]["versions"]
        assert [v["storage"] for v in versions].count(True) == 1
        assert all(v["subresources"] == {"status": {}} for v in versions)
    spec = definitions["VirtualService"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    properties = spec["properties"]["spec"]["properties"]
    assert "http" in properties  # accepted fields are documented ...
    assert spec["properties"]["spec"]["x-kubernetes-preserve-unknown-fields"]  # ... not enforced


def vs(name: str, weight_v2: int, **extra: Any) -> dict[str, Any]:
    route = [
        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 100 - weight_v2},
        {"destination": {"host": "reviews", "subset": "v2"}, "weight": weight_v2},
    ]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "shop", "generation": 1},
        "spec": {"hosts": ["reviews"], "http": [{"route": route, **extra}]},
    }


def source_with(*objects: dict[str, Any]) -> KubeConfigSource:
    source = KubeConfigSource(KubeConnection("https://127.0.0.1:1", False))
    reflector = source.reflectors["VirtualService"]
    reflector.items = {f"shop/{o['metadata']['name']}": o for o in objects}
    source._changed()
    return source


def weights(source: KubeConfigSource) -> list[int]:
    [doc] = source.documents()
    _, resource = parse_document(Problems([], doc.file), doc)
    assert isinstance(resource, VirtualService)
    return [d.weight for d in resource.http[0].route]


def test_a_rejected_resource_keeps_its_last_good_version() -> None:
    source = source_with(vs("reviews", 20))
    assert weights(source) == [80, 20]
    source.reflectors["VirtualService"].items["shop/reviews"] = vs("reviews", 50, frobnicate=1)
    source._changed()
    assert weights(source) == [80, 20]
    problems = source.status()["rejected"]
    assert problems == ["VirtualService/shop/reviews"]
    assert [p.field for p in source._problems["VirtualService/shop/reviews"]] == [
        "spec.http[0].frobnicate"
    ]
    del source.reflectors["VirtualService"].items["shop/reviews"]
    source._changed()
    assert source.documents() == ()  # deleted: its last good version goes too


def test_a_new_resource_that_is_rejected_serves_nothing() -> None:
    source = source_with(vs("reviews", 20, frobnicate=1))
    assert source.documents() == ()


def test_files_win_over_custom_resources(tmp_path: Path) -> None:
    (tmp_path / "vs.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: reviews, namespace: shop}\n"
        "spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n"
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        "metadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n"
        "  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]\n"
    )
    other = vs("other", 30)
    other["spec"]["hosts"] = ["ratings"]
    source = source_with(vs("reviews", 20), other)
    # The hosts are Kubernetes Services': declared by the registry, not by files.
    known = [
        ServiceEntry(
            Meta("ServiceEntry", f"k8s-{name}", "shop", "<kubernetes>"),
            (f"{name}.shop.svc.cluster.local",),
            (ServicePort(9080, "HTTP", "http"),),
        )
        for name in ("reviews", "ratings")
    ]
    with pytest.raises(ConfigLoadError, match="no ServiceEntry declares"):
        load_config_dir(tmp_path, extra=source.documents())
    config = load_config_dir(tmp_path, extra=source.documents(), known=known)
    assert config.service_entries == ()  # the hub adds the registry's entries later
    by_name = {v.meta.name: v for v in config.virtual_services}
    assert by_name["reviews"].meta.file == "vs.yaml"
    assert by_name["other"].meta.file == "kubernetes:VirtualService/shop/other"
    with pytest.raises(ConfigLoadError, match="duplicate"):  # two files: still an error
        (tmp_path / "again.yaml").write_text((tmp_path / "vs.yaml").read_text())
        load_config_dir(tmp_path)


def test_kinds_have_paths() -> None:
    assert (
        KINDS["Telemetry"].path("ns", "t")
        == "/apis/telemetry.istio.io/v1/namespaces/ns/telemetries/t"
    )
