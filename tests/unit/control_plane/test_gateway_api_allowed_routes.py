"""Gateway API allowedRoutes as the spec says: a listener kind it cannot serve
leaves the rest served (ResolvedRefs=False, InvalidRouteKinds, supportedKinds
the valid ones), and `from: Selector` picks namespaces by the labels of the
Namespaces read (`v1 Namespace` documents here; a Kubernetes watch in
tests/integration/test_kube_gateway_api.py)."""

from __future__ import annotations

import pytest
from mesh_control_plane.cli.gateway_status import conditions, listener_lines
from mesh_control_plane.config import MeshConfig
from mesh_control_plane.config.gateway_api_attach import attached_routes
from mesh_control_plane.config.gateway_api_status import listener_resolved_refs
from mesh_control_plane.config.label_selector import LabelSelector, Requirement
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import ROUTE, ClientKind, NodeInfo, translate

from .yaml_docs import load

SERVICES = "\n---\n".join(
    f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: {ns}}}
spec:
  hosts: [echo.{ns}.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9000, name: http, protocol: HTTP}}]
  endpoints: [{{address: 10.0.0.{i}}}]
"""
    for i, ns in enumerate(("edge", "team-a", "team-b", "other"), 1)
)
NODE = NodeInfo(
    id="router~x",
    kind=ClientKind.ENVOY,
    labels=(("gateway.networking.k8s.io/gateway-name", "gw"),),
    router=True,
)


def gateway(allowed: str) -> str:
    return f"""
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {{name: gw, namespace: edge}}
    spec:
      gatewayClassName: proxyless-mesh
      listeners:
      - name: http
        port: 80
        protocol: HTTP
        allowedRoutes: {allowed}
    """


def route(ns: str, kind: str = "HTTPRoute") -> str:
    return f"""
    apiVersion: gateway.networking.k8s.io/v1
    kind: {kind}
    metadata: {{name: r, namespace: {ns}}}
    spec:
      parentRefs: [{{name: gw, namespace: edge}}]
      hostnames: [{ns}.example.com]
      rules: [{{backendRefs: [{{name: echo, port: 9000}}]}}]
    """


def namespace(name: str, labels: str) -> str:
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {labels}}}\n"


def served(config: MeshConfig) -> list[str]:
    """The hostnames the gateway's port 80 routes."""
    rs = translate(config, build_static_registry(config), NODE)
    return sorted(v.domains[0] for v in rs.resources[ROUTE]["http.80"].virtual_hosts)  # type: ignore[attr-defined]


def test_a_listener_kind_it_cannot_serve_leaves_the_valid_ones_served() -> None:
    allowed = (
        "{kinds: [{kind: HTTPRoute}, {kind: TCPRoute}, {group: example.com, kind: HTTPRoute}]}"
    )
    config = load(SERVICES, gateway(allowed), route("edge"))
    (gw,) = config.gateways
    (listener,) = gw.servers
    assert listener.route_kinds == ("HTTPRoute",)
    status, reason, message = listener_resolved_refs(listener)
    assert (status, reason) == ("False", "InvalidRouteKinds")
    assert message == (
        "spec.listeners[0].allowedRoutes.kinds[1]: TCPRoute of gateway.networking.k8s.io: a "
        "HTTP listener serves HTTPRoute, GRPCRoute of gateway.networking.k8s.io "
        "(InvalidRouteKinds; not served); spec.listeners[0].allowedRoutes.kinds[2]: HTTPRoute "
        "of example.com: a HTTP listener serves HTTPRoute, GRPCRoute of "
        "gateway.networking.k8s.io (InvalidRouteKinds; not served)"
    )
    # The HTTPRoute is still served and attached; the load warns about the kinds.
    assert served(config) == ["edge.example.com"]
    assert attached_routes(gw, listener, config.virtual_services) == 1
    assert [w.field for w in config.warnings] == [
        "spec.listeners[0].allowedRoutes.kinds[1]",
        "spec.listeners[0].allowedRoutes.kinds[2]",
    ]
    assert listener_lines(config) == [
        "Gateway edge/gw listener http: attachedRoutes=1",
        f"Gateway edge/gw listener http: ResolvedRefs=False (InvalidRouteKinds): {message}",
        "Gateway edge/gw listener http: supportedKinds=HTTPRoute",
    ]


def test_a_listener_of_only_invalid_kinds_serves_no_route() -> None:
    config = load(SERVICES, gateway("{kinds: [{kind: TLSRoute}]}"), route("edge"))
    (listener,) = config.gateways[0].servers
    assert listener.route_kinds == ()
    assert listener_resolved_refs(listener)[:2] == ("False", "InvalidRouteKinds")
    assert served(config) == []
    (verdict,) = [str(c) for c in conditions(config, None) if c.type == "Accepted" and c.parent]
    assert "Accepted=False (NotAllowedByListeners)" in verdict
    assert listener_lines(config)[-1] == "Gateway edge/gw listener http: supportedKinds=none"


def test_empty_kinds_are_the_protocols_kinds() -> None:
    config = load(SERVICES, gateway("{kinds: []}"), route("edge"))
    assert config.gateways[0].servers[0].route_kinds == ("HTTPRoute", "GRPCRoute")
    assert served(config) == ["edge.example.com"]


def test_a_valid_listener_resolves_its_refs() -> None:
    config = load(SERVICES, gateway("{kinds: [{kind: GRPCRoute}]}"), route("edge", "GRPCRoute"))
    (listener,) = config.gateways[0].servers
    assert listener_resolved_refs(listener) == ("True", "ResolvedRefs", "its references resolve")
    assert config.warnings == ()


SELECTED = "{namespaces: {from: Selector, selector: %s}}"


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("{matchLabels: {team: shop}}", ["team-a.example.com", "team-b.example.com"]),
        ("{matchLabels: {team: shop, tier: front}}", ["team-a.example.com"]),
        (
            "{matchExpressions: [{key: tier, operator: NotIn, values: [front]}]}",
            ["edge.example.com", "other.example.com", "team-b.example.com"],
        ),
        (
            "{matchExpressions: [{key: tier, operator: Exists}]}",
            ["team-a.example.com", "team-b.example.com"],
        ),
        (
            "{matchExpressions: [{key: team, operator: DoesNotExist}]}",
            ["edge.example.com", "other.example.com"],
        ),
        (
            "{matchExpressions: [{key: team, operator: In, values: [shop, x]}, "
            "{key: tier, operator: In, values: [back]}]}",
            ["team-b.example.com"],
        ),
        # The name label is on every namespace, declared by a document or not.
        ("{matchLabels: {kubernetes.io/metadata.name: other}}", ["other.example.com"]),
        ("{}", [f"{ns}.example.com" for ns in ("edge", "other", "team-a", "team-b")]),
        ("{matchLabels: {team: nobody}}", []),
    ],
)
def test_a_selector_picks_namespaces_by_their_labels(selector: str, expected: list[str]) -> None:
    config = load(
        SERVICES,
        gateway(SELECTED % selector),
        namespace("team-a", "{team: shop, tier: front}"),
        namespace("team-b", "{team: shop, tier: back}"),
        *(route(ns) for ns in ("edge", "team-a", "team-b", "other")),
    )
    assert served(config) == expected
    (gw,) = config.gateways
    assert attached_routes(gw, gw.servers[0], config.virtual_services) == len(expected)
    verdicts = {c.resource: c.reason for c in conditions(config, None) if c.type == "Accepted"}
    for ns in ("edge", "team-a", "team-b", "other"):
        wanted = "Accepted" if f"{ns}.example.com" in expected else "NotAllowedByListeners"
        assert verdicts[f"HTTPRoute {ns}/r"] == wanted


def test_a_change_of_a_namespaces_labels_changes_what_attaches() -> None:
    texts = (SERVICES, gateway(SELECTED % "{matchLabels: {team: shop}}"), route("team-a"))
    assert served(load(*texts, namespace("team-a", "{team: shop}"))) == ["team-a.example.com"]
    assert served(load(*texts, namespace("team-a", "{team: other}"))) == []
    assert served(load(*texts)) == []  # no Namespace document: only the name label


def test_label_selector_semantics() -> None:
    labels = {"a": "1", "b": "2"}
    assert LabelSelector(()).matches(labels)
    for requirement, holds in (
        (Requirement("a", "In", frozenset({"1", "3"})), True),
        (Requirement("a", "In", frozenset({"3"})), False),
        (Requirement("c", "In", frozenset({"1"})), False),
        (Requirement("a", "NotIn", frozenset({"1"})), False),
        (Requirement("c", "NotIn", frozenset({"1"})), True),  # absent: not in
        (Requirement("a", "Exists"), True),
        (Requirement("c", "Exists"), False),
        (Requirement("c", "DoesNotExist"), True),
        (Requirement("b", "DoesNotExist"), False),
    ):
        assert requirement.holds(labels) is holds, requirement
