"""LDS and RDS for an Envoy gateway: the servers of the Gateways that select it.

One listener per server port (``0.0.0.0_<port>``, Istio's name), bound to the
node's BIND_ADDRESS, on the port itself or, with BIND_FREE_PORTS, on a port
the kernel picks. A plaintext port has one filter chain and one route table
``http.<port>``; an HTTPS port has a filter chain per server, chosen by SNI
among the server's hosts, each with its own TLS (sds.py) and route table
``https.<port>.<server>.<gateway>.<namespace>``; a port may hold both
terminating and passthrough servers, chosen by SNI. A route table holds a
virtual host per domain: each host of a VirtualService bound to the Gateway
(``gateways``) that a server host admits (namespace and wildcard, see
GatewayHost.admits), routed by the VirtualService's http rules. A TLS
PASSTHROUGH port has a chain per SNI name of the bound `tls` rules (and an
AUTO_PASSTHROUGH server one per cluster, gateway_sni.py); a TCP port
one chain proxying to the destinations of the first bound `tcp` rule that
applies there (no such rule: no listener, as nothing could be served).
Gateway API TLSRoutes and TCPRoutes arrive as such `tls` and `tcp` rules; a
Gateway API listener serves only the route kinds its allowedRoutes admit.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf.message import Message

from mesh_control_plane.config.gateway_api_attach import binds
from mesh_control_plane.config.model import HTTPRouteDestination, MeshConfig, VirtualService
from mesh_control_plane.config.parse_gateway import Gateway, GatewayServer
from mesh_control_plane.translate.gateway_sni import auto_passthrough_chains
from mesh_control_plane.translate.index import MeshIndex
from mesh_control_plane.translate.names import cluster_name
from mesh_control_plane.translate.node import NodeInfo
from mesh_control_plane.translate.protos import HCM_FILTER, pack, rds_connection_manager
from mesh_control_plane.translate.routes import (
    destination_port,
    http_routes,
    route_configuration,
)
from mesh_control_plane.translate.sds import gateway_downstream_socket
from mesh_control_plane.translate.tcp_telemetry import add_tcp_telemetry

TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
_Server = tuple[Gateway, int, GatewayServer]  # the Gateway, the server's index, the server


def gateways_of(config: MeshConfig, node: NodeInfo) -> list[Gateway]:
    labels = dict(node.labels)
    return [gateway for gateway in config.gateways if gateway.selects(labels)]


def gateway_listeners(
    config: MeshConfig, index: MeshIndex, node: NodeInfo
) -> tuple[list[Message], list[Message]]:
    by_port: dict[int, list[_Server]] = {}
    for gateway in gateways_of(config, node):
        for i, server in enumerate(gateway.servers):
            by_port.setdefault(server.number, []).append((gateway, i, server))
    listeners: list[Message] = []
    routes: list[Message] = []
    for port, servers in sorted(by_port.items()):
        listener = listener_pb2.Listener(
            name=f"0.0.0.0_{port}",
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(
                    address=node.bind_address, port_value=0 if node.free_ports else port
                )
            ),
        )
        if servers[0][2].tcp:
            chain = _tcp_port_chain(config, index, servers, port)
            if chain is None:
                continue
            listener.filter_chains.append(chain)
        elif servers[0][2].passthrough or servers[0][2].terminates_tls:
            listener.listener_filters.add(
                name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector())
            )
            chains, tables = _tls_port_chains(config, index, servers, port)
            listener.filter_chains.extend(chains)
            routes.extend(tables)
        else:
            name = f"http.{port}"
            listener.filter_chains.append(_filter_chain(name, port))
            routes.append(_route_table(name, config, index, servers, port))
        listeners.append(listener)
    return listeners, routes


def _tls_port_chains(
    config: MeshConfig, index: MeshIndex, servers: list[_Server], port: int
) -> tuple[list[listener_components_pb2.FilterChain], list[Message]]:
    """A TLS port's chains, chosen by SNI: one per terminating server (its
    hosts) with its route table, then the passthrough ones for SNI names no
    terminating server claims (a name terminated there is its listener's
    exactly, more specific than the passthrough listener's hostname)."""
    chains: list[listener_components_pb2.FilterChain] = []
    routes: list[Message] = []
    claimed: set[str] = set()
    for gateway, i, server in servers:
        if not server.terminates_tls:
            continue
        meta = gateway.meta
        name = f"https.{port}.{server.name or i}.{meta.name}.{meta.namespace}"
        chain = _filter_chain(name, port)
        sni = sorted({h.host for h in server.hosts})
        if "*" not in sni:
            chain.filter_chain_match.server_names.extend(sni)
        claimed.update(chain.filter_chain_match.server_names or ["*"])
        chain.transport_socket.CopyFrom(
            gateway_downstream_socket(server.tls.mode, server.tls.credential_name)
        )
        chains.append(chain)
        routes.append(_route_table(name, config, index, [(gateway, i, server)], port))
    passing = [s for s in servers if s[2].passthrough]
    by_rules = [s for s in passing if s[2].tls.mode == "PASSTHROUGH"]
    for chain in (
        *_passthrough_chains(config, index, by_rules, port),
        *auto_passthrough_chains(index, [s for _, _, s in passing], port),
    ):
        if claimed.isdisjoint(chain.filter_chain_match.server_names or ["*"]):
            chains.append(chain)
    return chains, routes


def _passthrough_chains(
    config: MeshConfig, index: MeshIndex, servers: Iterable[_Server], port: int
) -> list[listener_components_pb2.FilterChain]:
    """One chain per SNI name a bound VirtualService's `tls` rule matches (and a
    server host admits), proxying the TLS bytes untouched to its destination."""
    chains: dict[str, listener_components_pb2.FilterChain] = {}
    for gateway, _, server in servers:
        for vs in _bound(config, gateway, server):
            for rule in vs.tls:
                for match in rule.match:
                    if match.gateways and gateway.ref not in match.gateways:
                        continue
                    if match.port is not None and match.port != port:
                        continue
                    for sni in match.sni_hosts:
                        name = next(
                            (d for h in server.hosts if (d := h.admits(vs.meta.namespace, sni))),
                            None,
                        )
                        if name is not None and name not in chains:  # first rule wins
                            chains[name] = _tcp_chain(name, index, rule.route, port)
    return [chains[name] for name in sorted(chains)]


def _tcp_port_chain(
    config: MeshConfig, index: MeshIndex, servers: Iterable[_Server], port: int
) -> listener_components_pb2.FilterChain | None:
    """The first `tcp` rule (in VirtualService order) that applies to this
    Gateway and port, of a VirtualService with a host a server admits."""
    for gateway, _, server in servers:
        for vs in _bound(config, gateway, server):
            admitted = any(
                h.admits(vs.meta.namespace, host) for h in server.hosts for host in vs.hosts
            )
            rule = next((r for r in vs.tcp if r.applies(gateway.ref, port)), None)
            if admitted and rule is not None:
                return _tcp_chain("", index, rule.route, port)
    return None


def _tcp_chain(
    sni: str, index: MeshIndex, route: tuple[HTTPRouteDestination, ...], port: int
) -> listener_components_pb2.FilterChain:
    """tcp_proxy to weighted destinations; matched by `sni` when one is given."""
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=f"gateway_{port}_{'tls' if sni else 'tcp'}")
    targets = [
        (
            cluster_name(
                d.destination.host,
                destination_port(index, d.destination, port),
                d.destination.subset or "",  # Istio's tcp-echo sample splits by subset
            ),
            d.weight,
        )
        for d in route
    ]
    if len(targets) == 1:
        proxy.cluster = targets[0][0]
    else:
        for name, weight in targets:
            proxy.weighted_clusters.clusters.add(name=name, weight=weight)
    add_tcp_telemetry(proxy, "source")  # istio_tcp_* (a gateway reports as the source)
    chain = listener_components_pb2.FilterChain(
        filters=[listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(proxy))]
    )
    if sni and sni != "*":  # "*": any SNI (a TLSRoute without hostnames)
        chain.filter_chain_match.server_names.append(sni)
    return chain


def _filter_chain(route_name: str, port: int) -> listener_components_pb2.FilterChain:
    manager = rds_connection_manager(route_name, stat_prefix=f"gateway_{port}")
    manager.strip_any_host_port = True  # domains are host names, whatever port the client used
    return listener_components_pb2.FilterChain(
        filters=[listener_components_pb2.Filter(name=HCM_FILTER, typed_config=pack(manager))]
    )


def _route_table(
    name: str, config: MeshConfig, index: MeshIndex, servers: Iterable[_Server], port: int
) -> route_pb2.RouteConfiguration:
    hosts: dict[str, rc_pb2.VirtualHost] = {}
    for gateway, _, server in servers:
        for vs in _bound(config, gateway, server):
            for vs_host in vs.hosts:
                domain = next(
                    (d for h in server.hosts if (d := h.admits(vs.meta.namespace, vs_host))),
                    None,
                )
                if domain is None or domain in hosts:  # first VirtualService wins, as in Istio
                    continue
                vhost = rc_pb2.VirtualHost(
                    name=f"{domain}:{port}",
                    domains=[domain],
                    routes=http_routes(
                        index, vs, port, disable_default_timeout=True, bound_to=gateway.ref
                    ),
                )
                if server.tls.https_redirect:
                    vhost.require_tls = rc_pb2.VirtualHost.ALL
                hosts[domain] = vhost
    return route_configuration(name, hosts.values())


def _bound(config: MeshConfig, gateway: Gateway, server: GatewayServer) -> list[VirtualService]:
    """The routes bound to `gateway` (or to this server: a parentRef's
    sectionName or port) of a kind `server` serves (allowedRoutes)."""
    return [
        vs
        for vs in config.virtual_services
        if binds(vs, gateway, server) and server.serves(vs.meta.kind)
    ]
