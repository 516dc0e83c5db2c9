"""Gateway API listeners: TLS (Passthrough) and TCP with TLSRoute and TCPRoute,
translated to the same Envoy chains as an Istio Gateway's `tls`/`tcp` rules;
allowedRoutes (namespaces and kinds) and hostname intersection, with the
route's Accepted reason as the spec names it."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from mesh_control_plane.cli.gateway_status import conditions
from mesh_control_plane.config import MeshConfig
from mesh_control_plane.config.gateway_api_attach import attached_routes
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import LISTENER, ROUTE, ClientKind, NodeInfo, translate

from .yaml_docs import load, problems

SERVICES = "\n---\n".join(
    f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{name}.{ns}.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  endpoints: [{{address: 10.0.0.{i}}}]
"""
    for i, (name, ns) in enumerate((("echo", "edge"), ("echo2", "edge"), ("db", "data")), 1)
)
GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: edge}
spec:
  gatewayClassName: proxyless-mesh
  listeners:
  - {name: tls, port: 8443, protocol: TLS, hostname: "*.example.com", tls: {mode: Passthrough}}
  - name: tcp
    port: 9000
    protocol: TCP
    allowedRoutes: {namespaces: {from: All}}
"""
ALPHA = "apiVersion: gateway.networking.k8s.io/v1alpha2\n"
TLS_ROUTE = (
    ALPHA
    + """
kind: TLSRoute
metadata: {name: sni, namespace: edge}
spec:
  parentRefs: [{name: gw}]
  hostnames: [a.example.com]
  rules:
  - backendRefs: [{name: echo, port: 9000, weight: 3}, {name: echo2, port: 9000, weight: 1}]
"""
)
TCP_ROUTE = (
    ALPHA
    + """
kind: TCPRoute
metadata: {name: bytes, namespace: data}
spec:
  parentRefs: [{name: gw, namespace: edge}]
  rules: [{backendRefs: [{name: db, port: 9000}]}]
"""
)
NODE = NodeInfo(
    id="router~x",
    kind=ClientKind.ENVOY,
    labels=(("gateway.networking.k8s.io/gateway-name", "gw"),),
    router=True,
)


def chains(config: MeshConfig) -> dict[str, dict[tuple[str, ...], Any]]:
    """listener -> (SNI names of a chain) -> its tcp_proxy target(s)."""
    rs = translate(config, build_static_registry(config), NODE)
    found: dict[str, dict[tuple[str, ...], Any]] = {}
    for name, listener in rs.resources[LISTENER].items():
        for chain in listener.filter_chains:  # type: ignore[attr-defined]
            proxy = tcp_proxy_pb2.TcpProxy()
            chain.filters[0].typed_config.Unpack(proxy)
            weighted = [(c.name, c.weight) for c in proxy.weighted_clusters.clusters]
            sni = tuple(chain.filter_chain_match.server_names)
            found.setdefault(name, {})[sni] = proxy.cluster or weighted
    return found


def attached(config: MeshConfig) -> dict[str, int]:
    """listener name -> routes attached to it (status.listeners[].attachedRoutes)."""
    (gateway,) = config.gateways
    return {s.name: attached_routes(gateway, s, config.virtual_services) for s in gateway.servers}


def accepted(config: MeshConfig) -> list[str]:
    return [str(c) for c in conditions(config, None) if c.parent and c.type == "Accepted"]


def test_tls_and_tcp_routes_become_passthrough_and_tcp_chains() -> None:
    config = load(SERVICES, GATEWAY, TLS_ROUTE, TCP_ROUTE)
    assert chains(config) == {
        "0.0.0.0_8443": {
            ("a.example.com",): [
                ("outbound|9000||echo.edge.svc.cluster.local", 3),
                ("outbound|9000||echo2.edge.svc.cluster.local", 1),
            ]
        },
        # The TCPRoute of namespace data: admitted by allowedRoutes from All.
        "0.0.0.0_9000": {(): "outbound|9000||db.data.svc.cluster.local"},
    }
    assert accepted(config) == [
        "TCPRoute data/bytes parent edge/gw: Accepted=True (Accepted)",
        "TLSRoute edge/sni parent edge/gw: Accepted=True (Accepted)",
    ]
    assert attached(config) == {"tls": 1, "tcp": 1}
    # No hostnames: any SNI the listener's hostname admits.
    anyname = TLS_ROUTE.replace("hostnames: [a.example.com]", "")
    assert list(chains(load(SERVICES, GATEWAY, anyname))["0.0.0.0_8443"]) == [("*.example.com",)]


def test_routes_the_listeners_do_not_admit_are_not_served_and_say_why() -> None:
    # The TLS listener admits only its own namespace (Same, the default); the
    # TCP listener only TCPRoutes, and no hostname of b.other.com is served.
    foreign = TLS_ROUTE.replace("namespace: edge}", "namespace: data}").replace(
        "parentRefs: [{name: gw}]", "parentRefs: [{name: gw, namespace: edge}]"
    )
    foreign = foreign.replace("name: echo,", "name: db,").replace(
        "{name: echo2, port: 9000, weight: 1}", "{name: db, port: 9000, weight: 1}"
    )
    elsewhere = TLS_ROUTE.replace("a.example.com", "b.other.com").replace("sni,", "other,")
    config = load(SERVICES, GATEWAY, foreign, elsewhere)
    assert "0.0.0.0_8443" not in chains(config)
    assert attached(config) == {"tls": 0, "tcp": 0}
    assert accepted(config) == [
        "TLSRoute data/sni parent edge/gw: Accepted=False (NotAllowedByListeners): no listener "
        "of Gateway edge/gw admits TLSRoutes of namespace data (listeners[].allowedRoutes)",
        "TLSRoute edge/other parent edge/gw: Accepted=False (NoMatchingListenerHostname): no "
        "hostname of the route intersects an admitting listener's of Gateway edge/gw",
    ]


def test_allowed_routes_by_namespace_name_and_kind() -> None:
    gateway = """
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {name: gw, namespace: edge}
    spec:
      gatewayClassName: proxyless-mesh
      listeners:
      - name: http
        port: 80
        protocol: HTTP
        allowedRoutes:
          namespaces:
            from: Selector
            selector: {matchLabels: {kubernetes.io/metadata.name: data}}
          kinds: [{kind: GRPCRoute}]
    """
    route = """
    apiVersion: gateway.networking.k8s.io/v1
    kind: {kind}
    metadata: {{name: r, namespace: {ns}}}
    spec:
      parentRefs: [{{name: gw, namespace: edge}}]
      rules: [{{backendRefs: [{{name: db, namespace: data, port: 9000}}]}}]
    """
    admitted = route.format(kind="GRPCRoute", ns="data")
    config = load(SERVICES, gateway, admitted)
    rs = translate(config, build_static_registry(config), NODE)
    (vhost,) = rs.resources[ROUTE]["http.80"].virtual_hosts  # type: ignore[attr-defined]
    assert [r.route.cluster for r in vhost.routes] == ["outbound|9000||db.data.svc.cluster.local"]
    for kind, ns in (("HTTPRoute", "data"), ("GRPCRoute", "edge")):
        config = load(SERVICES, gateway, route.format(kind=kind, ns=ns))
        (verdict,) = accepted(config)
        assert "Accepted=False (NotAllowedByListeners)" in verdict, verdict
        rs = translate(config, build_static_registry(config), NODE)
        assert not rs.resources[ROUTE]["http.80"].virtual_hosts  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("listener", "expected"),
    [
        (
            "{name: t, port: 443, protocol: TLS, tls: {mode: Terminate}}",
            "spec.listeners[0].tls.mode: Terminate on a TLS listener is not supported yet",
        ),
        (
            "{name: h, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector, "
            "selector: {matchExpressions: [{key: team, operator: Near, values: [a]}]}}}}",
            "spec.listeners[0].allowedRoutes.namespaces.selector.matchExpressions[0].operator: "
            'unknown value "Near"',
        ),
        (
            "{name: h, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector, "
            "selector: {matchExpressions: [{key: team, operator: In}]}}}}",
            "spec.listeners[0].allowedRoutes.namespaces.selector.matchExpressions[0].values: "
            "must not be empty for In",
        ),
        (
            "{name: h, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector}}}",
            "spec.listeners[0].allowedRoutes.namespaces.selector: missing required field "
            "(from: Selector)",
        ),
    ],
)
def test_listeners_refuse_what_they_cannot_serve_by_field(listener: str, expected: str) -> None:
    gateway = (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\n"
        f"spec:\n  gatewayClassName: c\n  listeners: [{listener}]\n"
    )
    found = problems(gateway)
    assert any(expected in p for p in found), found


def test_tls_and_tcp_routes_refuse_by_field() -> None:
    two_rules = TCP_ROUTE.replace(
        "rules: [{backendRefs: [{name: db, port: 9000}]}]",
        "rules: [{backendRefs: [{name: db, port: 9000}]}, {backendRefs: [{name: db, port: 9000}]}]",
    )
    gamma = TLS_ROUTE.replace(
        "parentRefs: [{name: gw}]", "parentRefs: [{name: echo, kind: Service}]"
    )
    assert problems(SERVICES, two_rules, gamma) == [
        "gw.yaml: TCPRoute data/bytes: spec.rules: several rules are not supported yet "
        "(they have no matches)",
        "gw.yaml: TLSRoute edge/sni: spec.parentRefs: a Service as parent (GAMMA) of a "
        "TLSRoute: not supported yet",
    ]


def test_a_virtual_service_bound_to_a_gateway_api_gateway_is_warned_about() -> None:
    """Not served there (a listener serves Gateway API route kinds), and said."""
    istio = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: vs, namespace: edge}
    spec:
      hosts: ["*"]
      gateways: [gw]
      tcp: [{route: [{destination: {host: echo.edge.svc.cluster.local}}]}]
    """
    config = load(SERVICES, GATEWAY, istio)
    assert "0.0.0.0_9000" not in chains(config)
    assert [str(w) for w in config.warnings] == [
        "gw.yaml: VirtualService edge/vs: spec.gateways[0]: edge/gw is a Gateway API Gateway: "
        "it serves the routes its listeners admit (allowedRoutes), not VirtualServices (IST0101)"
    ]


def test_a_parent_ref_may_name_one_listener_by_section_or_port() -> None:
    gateway = """
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {name: gw, namespace: edge}
    spec:
      gatewayClassName: proxyless-mesh
      listeners:
      - {name: main, port: 80, protocol: HTTP}
      - {name: alt, port: 8080, protocol: HTTP}
    """
    route = """
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {{name: {name}, namespace: edge}}
    spec:
      parentRefs: [{parent}]
      hostnames: [{name}.example.com]
      rules: [{{backendRefs: [{{name: echo, port: 9000}}]}}]
    """
    config = load(
        SERVICES,
        gateway,
        route.format(name="alt", parent="{name: gw, sectionName: alt}"),
        route.format(name="main", parent="{name: gw, port: 80}"),
        route.format(name="both", parent="{name: gw}"),
        route.format(name="lost", parent="{name: gw, sectionName: nope}"),
    )
    rs = translate(config, build_static_registry(config), NODE)
    served = {
        name: sorted(v.domains[0] for v in rs.resources[ROUTE][name].virtual_hosts)  # type: ignore[attr-defined]
        for name in ("http.80", "http.8080")
    }
    assert served == {
        "http.80": ["both.example.com", "main.example.com"],
        "http.8080": ["alt.example.com", "both.example.com"],
    }
    assert accepted(config) == [
        "HTTPRoute edge/alt parent edge/gw/alt: Accepted=True (Accepted)",
        "HTTPRoute edge/both parent edge/gw: Accepted=True (Accepted)",
        "HTTPRoute edge/lost parent edge/gw/nope: Accepted=False (NoMatchingParent): "
        "Gateway edge/gw has no listener edge/gw/nope",
        "HTTPRoute edge/main parent edge/gw:80: Accepted=True (Accepted)",
    ]
    assert attached(config) == {"main": 2, "alt": 2}
