"""An HTTPS (Terminate) and a TLS (Passthrough) listener on one port, told
apart by SNI as the Gateway API allows (and Istio for its servers): one Envoy
listener whose chains are the terminating listener's hosts (its certificate,
its route table) and the passthrough SNI names; a name terminated there is not
also passed through (that listener's hostname is the more specific), and one
host on both is refused."""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from mesh_control_plane.config import MeshConfig
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import LISTENER, ROUTE, ClientKind, NodeInfo, translate

from .yaml_docs import load, problems

SERVICES = "\n---\n".join(
    f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: edge}}
spec:
  hosts: [{name}.edge.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: p, protocol: {protocol}}}]
  endpoints: [{{address: 10.0.0.{i}}}]
"""
    for i, (name, port, protocol) in enumerate((("web", 8080, "HTTP"), ("api", 443, "TLS")), 1)
)


def gateway(web_host: str = "web.example.com", pass_host: str = "*.example.com") -> str:
    return f"""
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {{name: gw, namespace: edge}}
    spec:
      gatewayClassName: proxyless-mesh
      listeners:
      - name: https
        port: 443
        protocol: HTTPS
        hostname: "{web_host}"
        tls: {{mode: Terminate, certificateRefs: [{{name: web-cert}}]}}
      - name: tls
        port: 443
        protocol: TLS
        hostname: "{pass_host}"
        tls: {{mode: Passthrough}}
    """


HTTP_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: edge}
spec:
  parentRefs: [{name: gw, sectionName: https}]
  hostnames: [web.example.com]
  rules: [{backendRefs: [{name: web, port: 8080}]}]
"""


def tls_route(*hostnames: str) -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: api, namespace: edge}}
spec:
  parentRefs: [{{name: gw, sectionName: tls}}]
  hostnames: [{", ".join(hostnames)}]
  rules: [{{backendRefs: [{{name: api, port: 443}}]}}]
"""


NODE = NodeInfo(
    id="router~x",
    kind=ClientKind.ENVOY,
    labels=(("gateway.networking.k8s.io/gateway-name", "gw"),),
    router=True,
)


def chains(config: MeshConfig) -> list[tuple[tuple[str, ...], str, Any]]:
    """(SNI names, what the chain does, its target) of port 443's chains."""
    rs = translate(config, build_static_registry(config), NODE)
    listener = rs.resources[LISTENER]["0.0.0.0_443"]
    found = []
    for chain in listener.filter_chains:  # type: ignore[attr-defined]
        names = tuple(chain.filter_chain_match.server_names)
        if chain.HasField("transport_socket"):
            manager = hcm_pb2.HttpConnectionManager()
            chain.filters[0].typed_config.Unpack(manager)
            table = rs.resources[ROUTE][manager.rds.route_config_name]
            domains = [v.domains[0] for v in table.virtual_hosts]  # type: ignore[attr-defined]
            found.append((names, "terminate", domains))
        else:
            proxy = tcp_proxy_pb2.TcpProxy()
            chain.filters[0].typed_config.Unpack(proxy)
            found.append((names, "pass", proxy.cluster))
    return found


def test_a_terminating_and_a_passthrough_listener_share_a_port_by_sni() -> None:
    config = load(SERVICES, gateway(), HTTP_ROUTE, tls_route("api.example.com"))
    assert chains(config) == [
        (("web.example.com",), "terminate", ["web.example.com"]),
        (("api.example.com",), "pass", "outbound|443||api.edge.svc.cluster.local"),
    ]


def test_a_name_the_terminating_listener_holds_is_not_passed_through() -> None:
    """web.example.com is the HTTPS listener's exactly: more specific than
    the TLS listener's *.example.com, so its connections are terminated."""
    config = load(SERVICES, gateway(), HTTP_ROUTE, tls_route("api.example.com", "web.example.com"))
    assert [(names, kind) for names, kind, _ in chains(config)] == [
        (("web.example.com",), "terminate"),
        (("api.example.com",), "pass"),
    ]


def test_one_host_both_terminated_and_passed_through_is_refused() -> None:
    found = problems(SERVICES, gateway("*.example.com", "*.example.com"))
    assert found == [
        "gw.yaml: Gateway edge/gw: spec.listeners[1].protocol: port 443: host *.example.com is "
        "both terminated and passed through (one SNI name, one filter chain)"
    ]


def test_istio_servers_share_a_port_too() -> None:
    istio = """
    apiVersion: networking.istio.io/v1
    kind: Gateway
    metadata: {name: gw, namespace: edge}
    spec:
      selector: {istio: gw}
      servers:
      - port: {number: 443, name: https, protocol: HTTPS}
        hosts: [web.example.com]
        tls: {mode: SIMPLE, credentialName: web-cert}
      - port: {number: 443, name: tls, protocol: TLS}
        hosts: [api.example.com]
        tls: {mode: PASSTHROUGH}
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: api, namespace: edge}
    spec:
      hosts: [api.example.com]
      gateways: [gw]
      tls:
      - match: [{sniHosts: [api.example.com]}]
        route: [{destination: {host: api.edge.svc.cluster.local, port: {number: 443}}}]
    """
    config = load(SERVICES, istio)
    node = NodeInfo(id="router~x", kind=ClientKind.ENVOY, labels=(("istio", "gw"),), router=True)
    rs = translate(config, build_static_registry(config), node)
    listener = rs.resources[LISTENER]["0.0.0.0_443"]
    names = [tuple(c.filter_chain_match.server_names) for c in listener.filter_chains]  # type: ignore[attr-defined]
    assert names == [("web.example.com",), ("api.example.com",)]
