"""telemetry.istio.io Telemetry: parsed and refused by field as the library
would read it, scoped as Istio scopes it, and carried to library clients on
their listeners (and to nobody else)."""

from __future__ import annotations

import json
import textwrap

import pytest
import yaml
from mesh_control_plane.config import ConfigLoadError, MeshConfig, parse_documents
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import LISTENER, ClientKind, NodeInfo, translate
from mesh_control_plane.translate.telemetry import TELEMETRY_METADATA, telemetry_specs

from proxyless_mesh.xds_client import decode_listener

from .test_config_security import SERVICE


def telemetry(name: str, namespace: str, spec: str, version: str = "v1") -> str:
    return (
        f"apiVersion: telemetry.istio.io/{version}\nkind: Telemetry\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n"
        + textwrap.indent(textwrap.dedent(spec), "  ")
    )


MESH_WIDE = telemetry("mesh-default", "istio-system", "tracing: [{randomSamplingPercentage: 1}]")
NAMESPACE = telemetry("shop-logs", "shop", "accessLogging: [{providers: [{name: envoy}]}]")
WORKLOAD = telemetry(
    "api-errors",
    "shop",
    """
    selector: {matchLabels: {app: api}}
    accessLogging: [{filter: {expression: "response.code >= 500"}}]
    """,
    "v1alpha1",
)


def load(*texts: str) -> MeshConfig:
    docs = [
        (f"f{i}.yaml", doc)
        for i, text in enumerate(texts)
        for doc in yaml.safe_load_all(textwrap.dedent(text))
    ]
    return parse_documents(docs)


def test_telemetry_reaches_the_model() -> None:
    config = load(SERVICE, MESH_WIDE, NAMESPACE, WORKLOAD)
    names = [(t.meta.namespace, t.meta.name, t.selector) for t in config.telemetries]
    assert names == [
        ("istio-system", "mesh-default", None),
        ("shop", "api-errors", {"app": "api"}),
        ("shop", "shop-logs", None),
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "accessLogging: [{filter: {expression: \"request.url_path == '/x'\"}}]",
            "spec.accessLogging[0].filter.expression: unsupported CEL",
        ),
        ("tracing: [{providers: [{name: zipkin}]}]", "spec.tracing[0].providers: not supported"),
        ("targetRefs: [{kind: Gateway, name: gw}]", "spec.targetRefs: "),
        (
            "metrics: [{overrides: [{match: {metric: REQUEST_COUNTS}}]}]",
            "spec.metrics[0].overrides[0].match.metric: unknown metric",
        ),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_file_kind_name_field(
    spec: str, expected: str
) -> None:
    with pytest.raises(ConfigLoadError) as caught:
        load(telemetry("t", "shop", spec))
    (problem,) = caught.value.problems
    assert problem.file == "f0.yaml" and problem.resource == "Telemetry shop/t"
    assert f"{problem.field}: {problem.message}".startswith(expected), problem


def test_telemetry_needs_its_api_group() -> None:
    with pytest.raises(ConfigLoadError, match="unsupported apiVersion"):
        load(telemetry("t", "shop", "tracing: []").replace("telemetry.istio", "networking.istio"))


def node(namespace: str, **labels: str) -> NodeInfo:
    return NodeInfo(
        id="n", kind=ClientKind.MESH, namespace=namespace, labels=tuple(sorted(labels.items()))
    )


def test_scoping_is_istios_least_specific_first() -> None:
    config = load(SERVICE, MESH_WIDE, NAMESPACE, WORKLOAD)
    specs = {t.meta.name: t.spec for t in config.telemetries}
    assert telemetry_specs(config, node("shop", app="api")) == [
        specs["mesh-default"], specs["shop-logs"], specs["api-errors"],
    ]  # fmt: skip
    assert telemetry_specs(config, node("shop", app="web")) == [
        specs["mesh-default"], specs["shop-logs"],
    ]  # fmt: skip
    assert telemetry_specs(config, node("other", app="api")) == [specs["mesh-default"]]


def test_library_listeners_carry_the_specs_and_others_do_not() -> None:
    config = load(SERVICE, MESH_WIDE, WORKLOAD)
    registry = build_static_registry(config)
    mesh_node = node("shop", app="api")
    listener = translate(config, registry, mesh_node).resources[LISTENER]["reviews.mesh:8080"]
    decoded = decode_listener(listener)
    assert decoded.telemetry is not None
    assert json.loads(decoded.telemetry) == telemetry_specs(config, mesh_node)
    grpc = NodeInfo(id="g", kind=ClientKind.GRPC, namespace="shop", labels=(("app", "api"),))
    plain = translate(config, registry, grpc).resources[LISTENER]["reviews.mesh:8080"]
    assert TELEMETRY_METADATA not in plain.metadata.filter_metadata
    untouched = translate(load(SERVICE), build_static_registry(load(SERVICE)), mesh_node)
    assert decode_listener(untouched.resources[LISTENER]["reviews.mesh:8080"]).telemetry is None
