"""Istio Gateway: what loads, what is refused (naming the field), and what a
gateway's Envoy and the mesh's clients are each sent."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from mesh_control_plane.config import MeshConfig
from mesh_control_plane.config.parse_gateway import GatewayHost, host_covers
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import (
    CLUSTER,
    LISTENER,
    ROUTE,
    ClientKind,
    NodeInfo,
    ResourceSet,
    translate,
)

from .yaml_docs import load, problems

SERVICE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.1, ports: {http: 9080}, serviceAccount: reviews}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings.shop.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.2, ports: {http: 9080}, serviceAccount: ratings}]
"""
GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec:
  selector: {istio: ingress}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["shop/*.example.com"]
    tls: {mode: SIMPLE, credentialName: shop-cert}
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*/*"]
"""


def vs(name: str, hosts: str, gateways: str | None, destination: str) -> str:
    gateways_line = f"  gateways: {gateways}\n" if gateways is not None else ""
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: {name}, namespace: shop}}\nspec:\n  hosts: {hosts}\n"
        + gateways_line
        + f"  http: [{{route: [{{destination: {{host: {destination}}}}}]}}]\n"
    )


GATEWAY_NODE = NodeInfo(
    id="router~x", kind=ClientKind.ENVOY, labels=(("istio", "ingress"),), router=True
)


def run(config: MeshConfig, node: NodeInfo) -> ResourceSet:
    return translate(config, build_static_registry(config), node)


def routes_of(rs: ResourceSet, name: str) -> dict[str, list[str]]:
    """domain -> clusters its routes send to, of route table `name`."""
    table: Any = rs.resources[ROUTE][name]
    return {
        vh.domains[0]: [r.route.cluster for r in vh.routes]
        + (["redirect"] if vh.require_tls else [])
        for vh in table.virtual_hosts
    }


def test_a_gateway_only_virtual_service_routes_the_gateway_and_not_the_mesh() -> None:
    config = load(
        SERVICE,
        GATEWAY,
        vs("public", "[reviews.example.com]", "[ingress]", "ratings.shop.mesh"),
        vs("captures-mesh", "['*.example.com']", "[shop/ingress]", "ratings.shop.mesh"),
    )
    gateway = run(config, GATEWAY_NODE)
    assert sorted(gateway.resources[LISTENER]) == ["0.0.0.0_443", "0.0.0.0_80"]
    https = routes_of(gateway, "https.443.0.ingress.shop")
    assert https == {
        "reviews.example.com": ["outbound|8080||ratings.shop.mesh"],
        "*.example.com": ["outbound|8080||ratings.shop.mesh"],
    }
    assert routes_of(gateway, "http.80") == https
    # The mesh's clients still route reviews to reviews: the VirtualServices
    # bound only to the gateway are not theirs.
    mesh = run(config, NodeInfo(id="m", kind=ClientKind.MESH))
    assert routes_of(mesh, "reviews.shop.mesh:8080") == {
        "reviews.shop.mesh:8080": ["outbound|8080||reviews.shop.mesh"]
    }


def test_mesh_is_the_default_and_may_be_named_beside_a_gateway() -> None:
    config = load(
        SERVICE, GATEWAY, vs("both", "[reviews.shop.mesh]", "[mesh, ingress]", "ratings.shop.mesh")
    )
    mesh = run(config, NodeInfo(id="m", kind=ClientKind.MESH))
    assert routes_of(mesh, "reviews.shop.mesh:8080")["reviews.shop.mesh:8080"] == [
        "outbound|8080||ratings.shop.mesh"
    ]
    # The HTTPS server admits only *.example.com of namespace shop; port 80 admits all.
    gateway = run(config, GATEWAY_NODE)
    assert routes_of(gateway, "https.443.0.ingress.shop") == {}
    assert routes_of(gateway, "http.80") == {
        "reviews.shop.mesh": ["outbound|8080||ratings.shop.mesh"]
    }
    default = load(SERVICE, vs("plain", "[reviews.shop.mesh]", None, "ratings.shop.mesh"))
    assert default.virtual_services[0].gateways == ("mesh",)


def test_gateway_tls_and_upstream_mtls_come_by_sds() -> None:
    public = vs("public", "[a.example.com]", "[ingress]", "reviews.shop.mesh")
    config = load(SERVICE, GATEWAY, public)
    gateway = run(config, GATEWAY_NODE)
    listener: Any = gateway.resources[LISTENER]["0.0.0.0_443"]
    (chain,) = listener.filter_chains
    assert list(chain.filter_chain_match.server_names) == ["*.example.com"]
    downstream = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(downstream)
    (certificate,) = downstream.common_tls_context.tls_certificate_sds_secret_configs
    assert certificate.name == "kubernetes://shop-cert"
    assert not downstream.require_client_certificate.value
    manager = hcm_pb2.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(manager)
    assert manager.strip_any_host_port
    cluster: Any = gateway.resources[CLUSTER]["outbound|8080||reviews.shop.mesh"]
    upstream = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(upstream)
    context = upstream.common_tls_context
    assert [s.name for s in context.tls_certificate_sds_secret_configs] == ["default"]
    validation = context.combined_validation_context
    assert validation.validation_context_sds_secret_config.name == "ROOTCA"
    assert [
        m.matcher.exact for m in validation.default_validation_context.match_typed_subject_alt_names
    ] == ["spiffe://cluster.local/ns/shop/sa/reviews"]
    assert upstream.sni == "reviews.shop.mesh"
    # A gateway that selects other labels gets no listener; a sidecar Envoy
    # keeps its virtualOutbound.
    other = NodeInfo(id="router~y", kind=ClientKind.ENVOY, labels=(("istio", "b"),), router=True)
    assert not run(config, other).resources[LISTENER]
    sidecar = run(config, NodeInfo(id="e", kind=ClientKind.ENVOY))
    assert list(sidecar.resources[LISTENER]) == ["virtualOutbound"]


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        (
            "{port: {number: 9000, name: tcp, protocol: TCP}, hosts: ['*'], "
            "tls: {mode: SIMPLE, credentialName: x}}",
            "spec.servers[0].tls.mode: a plaintext TCP server has no TLS mode",
        ),
        (
            "{port: {number: 9000, name: m, protocol: MONGO}, hosts: ['*']}",
            "spec.servers[0].port.protocol: MONGO is not supported yet "
            "(supported: HTTP, HTTP2, GRPC, HTTPS, TLS, TCP)",
        ),
        (
            "{port: {number: 443, name: h, protocol: HTTPS}, hosts: ['*'], "
            "tls: {mode: AUTO_PASSTHROUGH}}",
            "spec.servers[0].tls.mode: AUTO_PASSTHROUGH is for TLS servers",
        ),
        (
            "{port: {number: 443, name: h, protocol: TLS}, hosts: ['*'], "
            "tls: {mode: SIMPLE, credentialName: x}}",
            "spec.servers[0].tls.mode: a TLS server takes PASSTHROUGH or AUTO_PASSTHROUGH here",
        ),
        (
            "{port: {number: 443, name: h, protocol: HTTPS}, hosts: ['*'], "
            "tls: {mode: OPTIONAL_MUTUAL}}",
            "spec.servers[0].tls.credentialName: missing required field "
            "(the server certificate for OPTIONAL_MUTUAL)",
        ),
        (
            "{port: {number: 443, name: h, protocol: HTTPS}, hosts: ['*'], "
            "tls: {mode: SIMPLE, serverCertificate: /c.pem, credentialName: x}}",
            "spec.servers[0].tls.serverCertificate: not supported yet",
        ),
        (
            "{port: {number: 443, name: h, protocol: HTTPS}, hosts: ['*'], tls: {mode: MUTUAL}}",
            "spec.servers[0].tls.credentialName: missing required field "
            "(the server certificate for MUTUAL)",
        ),
        (
            "{port: {number: 80, name: h, protocol: HTTP}, hosts: ['*'], bind: 1.2.3.4}",
            "spec.servers[0].bind: not supported yet",
        ),
        (
            "{port: {number: 80, name: h, protocol: HTTP}, hosts: ['a/b/c*']}",
            'spec.servers[0].hosts[0]: invalid namespace "a/b" in "a/b/c*" (expected "ns/host")',
        ),
    ],
)
def test_what_a_gateway_cannot_do_yet_is_refused_by_field(server: str, expected: str) -> None:
    text = (
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: shop}\n"
        f"spec:\n  selector: {{istio: g}}\n  servers: [{server}]\n"
    )
    assert problems(text)[0] == f"gw.yaml: Gateway shop/g: {expected}"


def test_one_port_is_all_plaintext_or_all_tls() -> None:
    text = """
    apiVersion: networking.istio.io/v1
    kind: Gateway
    metadata: {name: g}
    spec:
      servers:
      - {port: {number: 80, name: a, protocol: HTTP}, hosts: ['*']}
      - {port: {number: 80, name: b, protocol: HTTPS}, hosts: ['*'], tls: {mode: ISTIO_MUTUAL}}
    """
    assert problems(text) == [
        "gw.yaml: Gateway default/g: spec.selector: missing required field "
        "(the labels of the gateway workloads it programs)",
        "gw.yaml: Gateway default/g: spec.servers[1].port.protocol: "
        "port 80 mixes plaintext HTTP, TLS and TCP servers (one listener per port)",
    ]


def test_server_hosts_admit_by_namespace_and_wildcard() -> None:
    assert GatewayHost("*", "*").admits("any", "a.b") == "a.b"
    assert GatewayHost("shop", "*.example.com").admits("shop", "x.example.com") == "x.example.com"
    assert GatewayHost("shop", "*.example.com").admits("other", "x.example.com") is None
    assert GatewayHost("shop", "a.example.com").admits("shop", "*") == "a.example.com"
    assert GatewayHost("shop", "a.example.com").admits("shop", "b.example.com") is None
    assert host_covers("*.example.com", "*.x.example.com")
    assert not host_covers("*.example.com", "example.com")


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            "kind: TLSRoute\nmetadata: {name: r}\nspec: {}",
            "gw.yaml: TLSRoute default/r: apiVersion: TLSRoute is read at "
            "gateway.networking.k8s.io/v1alpha2",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: g}]\n"
            "  rules: [{backendRefs: [{name: a, port: 80}], filters: []}]",
            "gw.yaml: HTTPRoute default/r: spec.rules[0].filters: not supported yet",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: g}, "
            "{name: s, kind: Service}]\n  rules: [{backendRefs: [{name: a, port: 80}]}]",
            "gw.yaml: HTTPRoute default/r: spec.parentRefs: Gateways and Services as parents "
            "of one route: not supported yet",
        ),
        (
            "kind: Gateway\nmetadata: {name: g}\nspec:\n  gatewayClassName: istio\n"
            "  listeners: [{name: t, port: 443, protocol: UDP}]",
            "gw.yaml: Gateway default/g: spec.listeners[0].protocol: UDP is not supported yet "
            "(supported: HTTP, HTTPS, TLS, TCP)",
        ),
    ],
)
def test_gateway_api_refuses_what_it_cannot_do_yet(doc: str, expected: str) -> None:
    text = "apiVersion: gateway.networking.k8s.io/v1\n" + doc
    assert problems(text)[0] == expected


@pytest.mark.parametrize(
    ("mode", "roots"),
    [
        ("MUTUAL", "kubernetes://c-cacert"),
        ("ISTIO_MUTUAL", "ROOTCA"),
        ("SIMPLE", ""),
        ("OPTIONAL_MUTUAL", "kubernetes://c-cacert"),
    ],
)
def test_mutual_servers_demand_and_check_client_certificates(mode: str, roots: str) -> None:
    """OPTIONAL_MUTUAL checks a client certificate against the credential's CA
    but does not demand one."""
    from mesh_control_plane.translate.sds import gateway_downstream_socket

    downstream = tls_pb2.DownstreamTlsContext()
    gateway_downstream_socket(mode, "c").typed_config.Unpack(downstream)
    validation = downstream.common_tls_context.combined_validation_context
    assert validation.validation_context_sds_secret_config.name == roots
    demanded = mode in ("MUTUAL", "ISTIO_MUTUAL")
    assert downstream.require_client_certificate.value == demanded


def test_match_gateways_and_port_split_one_virtual_service_between_mesh_and_gateway() -> None:
    both = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: split, namespace: shop}
    spec:
      hosts: [reviews.shop.mesh]
      gateways: [mesh, ingress]
      http:
      - match: [{gateways: [mesh], port: 8080}]
        route: [{destination: {host: ratings.shop.mesh}}]
      - match: [{gateways: [ingress]}]
        route: [{destination: {host: reviews.shop.mesh}}]
      - match: [{gateways: [mesh], port: 9999}]
        route: [{destination: {host: reviews.shop.mesh}}]
    """
    config = load(SERVICE, GATEWAY, both)
    mesh = run(config, NodeInfo(id="m", kind=ClientKind.MESH))
    assert routes_of(mesh, "reviews.shop.mesh:8080") == {
        "reviews.shop.mesh:8080": ["outbound|8080||ratings.shop.mesh"]
    }
    gateway = run(config, GATEWAY_NODE)
    assert routes_of(gateway, "http.80") == {
        "reviews.shop.mesh": ["outbound|8080||reviews.shop.mesh"]
    }


def test_grpc_route_methods_become_grpc_paths() -> None:
    route = """
    apiVersion: gateway.networking.k8s.io/v1
    kind: GRPCRoute
    metadata: {name: g, namespace: shop}
    spec:
      parentRefs: [{name: reviews, kind: Service}]
      rules:
      - matches:
        - method: {service: a.B, method: Get}
        - method: {service: a.B}
        - method: {method: Get}
        - method: {type: RegularExpression, service: "a\\\\..*"}
        backendRefs: [{name: ratings, port: 8080}]
    """
    services = SERVICE.replace(".shop.mesh", ".shop.svc.cluster.local")
    (vs,) = load(services, route).virtual_services
    assert vs.hosts == ("reviews.shop.svc.cluster.local",) and vs.gateways == ("mesh",)
    assert [(m.uri.kind, m.uri.value) for m in vs.http[0].match if m.uri] == [
        ("exact", "/a.B/Get"),
        ("prefix", "/a.B/"),
        ("regex", "/[^/]+/Get"),
        ("regex", "/(a\\..*)/([^/]+)"),
    ]


def test_tls_routes_are_for_gateways_only_and_pass_tls_through_by_sni() -> None:
    mesh_tls = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: t, namespace: shop}
    spec:
      hosts: [reviews.shop.mesh]
      tls:
      - match: [{sniHosts: [reviews.shop.mesh]}]
        route: [{destination: {host: reviews.shop.mesh}}]
    """
    assert problems(SERVICE, mesh_tls) == [
        "gw.yaml: VirtualService shop/t: spec.tls: for mesh clients not supported yet "
        "(bind it to gateways only)"
    ]
    gateway = """
    apiVersion: networking.istio.io/v1
    kind: Gateway
    metadata: {name: edge, namespace: shop}
    spec:
      selector: {istio: ingress}
      servers:
      - {port: {number: 443, name: tls, protocol: TLS}, hosts: ["*"], tls: {mode: PASSTHROUGH}}
    """
    routed = mesh_tls.replace(
        "hosts: [reviews.shop.mesh]", "hosts: [reviews.shop.mesh]\n      gateways: [edge]"
    )
    rs = run(load(SERVICE, gateway, routed), GATEWAY_NODE)
    listener: Any = rs.resources[LISTENER]["0.0.0.0_443"]
    (chain,) = listener.filter_chains
    assert list(chain.filter_chain_match.server_names) == ["reviews.shop.mesh"]
    assert chain.filters[0].name == "envoy.filters.network.tcp_proxy"
    assert not chain.HasField("transport_socket")  # never decrypted


def test_tcp_routes_are_for_gateways_only_and_proxy_a_tcp_port() -> None:
    mesh_tcp = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: t, namespace: shop}
    spec:
      hosts: ["*"]
      tcp:
      - match: [{port: 9001, sourceSubnet: 10.0.0.0/8}]
        route: [{destination: {host: reviews.shop.mesh}}]
    """
    assert problems(SERVICE, mesh_tcp) == [
        'gw.yaml: VirtualService shop/t: spec.hosts[0]: wildcard hosts are not supported yet: "*"',
        "gw.yaml: VirtualService shop/t: spec.tcp[0].match[0].sourceSubnet: not supported yet",
        "gw.yaml: VirtualService shop/t: spec.tcp: for mesh clients not supported yet "
        "(bind it to gateways only)",
    ]
    gateway = """
    apiVersion: networking.istio.io/v1
    kind: Gateway
    metadata: {name: edge, namespace: shop}
    spec:
      selector: {istio: ingress}
      servers:
      - {port: {number: 9000, name: tcp-a, protocol: TCP}, hosts: ["*"]}
      - {port: {number: 9001, name: tcp-b, protocol: TCP}, hosts: ["*"]}
      - {port: {number: 9002, name: tcp-c, protocol: TCP}, hosts: ["*"]}
    """
    routed = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: t, namespace: shop}
    spec:
      hosts: ["*"]
      gateways: [edge]
      tcp:
      - match: [{port: 9001, gateways: [shop/edge]}]
        route:
        - {destination: {host: reviews.shop.mesh, port: {number: 8080}}, weight: 75}
        - {destination: {host: ratings.shop.mesh, port: {number: 8080}}, weight: 25}
      - match: [{port: 9000}]
        route: [{destination: {host: ratings.shop.mesh, port: {number: 8080}}}]
    """
    rs = run(load(SERVICE, gateway, routed), GATEWAY_NODE)
    proxies = {}
    for name, listener in rs.resources[LISTENER].items():
        (chain,) = listener.filter_chains  # type: ignore[attr-defined]
        assert chain.filters[0].name == "envoy.filters.network.tcp_proxy"
        assert not chain.HasField("filter_chain_match")  # every connection to the port
        proxy = tcp_proxy_pb2.TcpProxy()
        chain.filters[0].typed_config.Unpack(proxy)
        weighted = [(c.name, c.weight) for c in proxy.weighted_clusters.clusters]
        proxies[name] = proxy.cluster or weighted
    # Port 9002: no tcp rule applies there, so no listener (Envoy would refuse an empty one).
    assert proxies == {
        "0.0.0.0_9000": "outbound|8080||ratings.shop.mesh",
        "0.0.0.0_9001": [
            ("outbound|8080||reviews.shop.mesh", 75),
            ("outbound|8080||ratings.shop.mesh", 25),
        ],
    }
