"""LDS and RDS for an Envoy gateway: the servers of the Gateways that select it.

One listener per server port (``0.0.0.0_<port>``, Istio's name), bound to the
node's BIND_ADDRESS, on the port itself or, with BIND_FREE_PORTS, on a port
the kernel picks. A plaintext port has one filter chain and one route table
``http.<port>``; an HTTPS port has a filter chain per server, chosen by SNI
among the server's hosts, each with its own TLS (sds.py) and route table
``https.<port>.<server>.<gateway>.<namespace>``. A route table holds a
virtual host per domain: each host of a VirtualService bound to the Gateway
(``gateways``) that a server host admits (namespace and wildcard, see
GatewayHost.admits), routed by the VirtualService's http rules.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from google.protobuf.message import Message

from mesh_control_plane.config.model import MeshConfig, VirtualService
from mesh_control_plane.config.parse_gateway import Gateway, GatewayServer
from mesh_control_plane.translate.index import MeshIndex
from mesh_control_plane.translate.node import NodeInfo
from mesh_control_plane.translate.protos import HCM_FILTER, pack, rds_connection_manager
from mesh_control_plane.translate.routes import http_routes, route_configuration
from mesh_control_plane.translate.sds import gateway_downstream_socket

TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
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
        if servers[0][2].terminates_tls:
            listener.listener_filters.add(
                name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector())
            )
            for gateway, i, server in servers:
                meta = gateway.meta
                name = f"https.{port}.{server.name or i}.{meta.name}.{meta.namespace}"
                chain = _filter_chain(name, port)
                sni = sorted({h.host for h in server.hosts})
                if "*" not in sni:
                    chain.filter_chain_match.server_names.extend(sni)
                chain.transport_socket.CopyFrom(
                    gateway_downstream_socket(server.tls.mode, server.tls.credential_name)
                )
                listener.filter_chains.append(chain)
                routes.append(_route_table(name, config, index, [(gateway, i, server)], port))
        else:
            name = f"http.{port}"
            listener.filter_chains.append(_filter_chain(name, port))
            routes.append(_route_table(name, config, index, servers, port))
        listeners.append(listener)
    return listeners, routes


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
        for vs in _bound(config, gateway):
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


def _bound(config: MeshConfig, gateway: Gateway) -> list[VirtualService]:
    return [vs for vs in config.virtual_services if gateway.ref in vs.gateways]
