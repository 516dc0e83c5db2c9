"""An Envoy sidecar's inbound side (``meshctl proxy run``): the workload's
declared ports served by Envoy, forwarded to the application in plaintext.

For each HTTP-family port of the node's own instances (inbound.workload_ports)
that the node's INBOUND_PORTS maps to an application port: a listener
``inbound|<port>`` bound to the instance's address and port, whose filter
chains follow the PeerAuthentication mode as the library's do (STRICT: mTLS
only; PERMISSIVE: mTLS and plaintext told apart by the tls_inspector;
DISABLE: plaintext), the TLS from the agent by SDS (the workload certificate,
client certificates checked against the mesh roots); the HTTP filters are the
library's (jwt_authn, then RBAC in Istio's order), then the router to a
STATIC cluster ``inbound|<port>||`` at 127.0.0.1:<app port>. The caller's
SPIFFE ID reaches the application in ``x-forwarded-client-cert`` (Envoy's
SANITIZE_SET: a client cannot forge it).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.registry.static import Registry
from mesh_control_plane.translate.inbound import (
    MTLS_CHAIN,
    PLAINTEXT_CHAIN,
    TLS_INSPECTOR,
    apply_normalization,
    http_filters,
    peer_mode,
    workload_hosts,
    workload_ports,
)
from mesh_control_plane.translate.index import MeshIndex
from mesh_control_plane.translate.node import NodeInfo
from mesh_control_plane.translate.protos import HCM_FILTER, duration, pack, router_filter
from mesh_control_plane.translate.rbac_protos import JWT_FILTER_NAME
from mesh_control_plane.translate.sds import gateway_downstream_socket

APP_ADDRESS = "127.0.0.1"
LUA_FILTER = "envoy.filters.http.lua"


def inbound_cluster_name(port: int) -> str:
    return f"inbound|{port}||"


def sidecar_inbound(
    config: MeshConfig, index: MeshIndex, registry: Registry, node: NodeInfo
) -> tuple[list[listener_pb2.Listener], list[cluster_pb2.Cluster]]:
    app_ports = dict(node.inbound_ports)
    filters = _with_istio_authn(http_filters(config, node, workload_hosts(index, registry, node)))
    listeners: dict[str, listener_pb2.Listener] = {}
    clusters: dict[str, cluster_pb2.Cluster] = {}
    for address, port in sorted(workload_ports(index, registry, node)):
        if port not in app_ports:
            continue
        manager = _connection_manager(port, filters, config.settings.path_normalization)
        listener = listener_pb2.Listener(
            name=f"inbound|{port}",
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=address, port_value=port)
            ),
        )
        hcm = lc_pb2.Filter(name=HCM_FILTER, typed_config=pack(manager))
        add_peer_chains(listener, peer_mode(config, node, port), [hcm])
        listeners.setdefault(listener.name, listener)
        clusters[inbound_cluster_name(port)] = app_cluster(port, app_ports[port])
    return list(listeners.values()), list(clusters.values())


def add_peer_chains(
    listener: listener_pb2.Listener, mode: str, filters: list[lc_pb2.Filter]
) -> None:
    """The listener's filter chains for PeerAuthentication `mode` (STRICT:
    mTLS; PERMISSIVE: mTLS and plaintext told apart by the tls_inspector;
    DISABLE: plaintext), each running `filters`."""
    if mode in ("STRICT", "PERMISSIVE"):
        listener.filter_chains.append(_chain(MTLS_CHAIN, filters, tls=True, both=mode))
    if mode in ("DISABLE", "PERMISSIVE"):
        listener.filter_chains.append(_chain(PLAINTEXT_CHAIN, filters, tls=False, both=mode))
    if mode == "PERMISSIVE":
        listener.listener_filters.add(
            name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector())
        )


ISTIO_AUTHN_LUA = """
function envoy_on_request(handle)
  local meta = handle:streamInfo():dynamicMetadata()
  local jwt = meta:get("envoy.filters.http.jwt_authn")
  if jwt == nil or jwt["payload"] == nil then
    return
  end
  local p = jwt["payload"]
  if type(p["iss"]) == "string" and type(p["sub"]) == "string" then
    meta:set("istio_authn", "request.auth.principal", p["iss"] .. "/" .. p["sub"])
  end
  meta:set("istio_authn", "request.auth.claims", p)
  local aud = p["aud"]
  if type(aud) == "string" then
    aud = {aud}
  end
  if aud ~= nil then
    meta:set("istio_authn", "request.auth.audiences", aud)
  end
  if type(p["azp"]) == "string" then
    meta:set("istio_authn", "request.auth.presenter", p["azp"])
  end
end
"""
"""Istio's istio_authn filter, which upstream Envoy lacks, for what RBAC reads:
the request principal (iss/sub), claims, audiences and presenter of the token
jwt_authn verified, as the library's JWT check records them."""


def _with_istio_authn(filters: list[hcm_pb2.HttpFilter]) -> list[hcm_pb2.HttpFilter]:
    """jwt_authn keeps the verified payload in its metadata, and the Lua filter
    above turns it into Istio's `istio_authn` metadata, before RBAC."""
    out: list[hcm_pb2.HttpFilter] = []
    for item in filters:
        if item.name != JWT_FILTER_NAME:
            out.append(item)
            continue
        config = jwt_pb2.JwtAuthentication()
        item.typed_config.Unpack(config)
        for provider in config.providers.values():
            provider.payload_in_metadata = "payload"
        out.append(hcm_pb2.HttpFilter(name=JWT_FILTER_NAME, typed_config=pack(config)))
        lua = lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string=ISTIO_AUTHN_LUA))
        out.append(hcm_pb2.HttpFilter(name=LUA_FILTER, typed_config=pack(lua)))
    return out


def _chain(name: str, filters: list[lc_pb2.Filter], *, tls: bool, both: str) -> lc_pb2.FilterChain:
    chain = lc_pb2.FilterChain(name=name, filters=filters)
    if both == "PERMISSIVE":
        chain.filter_chain_match.transport_protocol = "tls" if tls else "raw_buffer"
    if tls:
        socket = gateway_downstream_socket("ISTIO_MUTUAL", "")
        chain.transport_socket.CopyFrom(socket)
    return chain


def _connection_manager(
    port: int, filters: list[hcm_pb2.HttpFilter], normalization: str
) -> hcm_pb2.HttpConnectionManager:
    action = rc_pb2.RouteAction(cluster=inbound_cluster_name(port), timeout=duration(0))
    route = rc_pb2.Route(name="inbound", match=rc_pb2.RouteMatch(prefix="/"), route=action)
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=f"inbound_{port}",
        route_config=route_pb2.RouteConfiguration(
            name=f"inbound|{port}",
            virtual_hosts=[
                rc_pb2.VirtualHost(name=f"inbound|http|{port}", domains=["*"], routes=[route])
            ],
        ),
        http_filters=[*filters, router_filter()],
        forward_client_cert_details=hcm_pb2.HttpConnectionManager.SANITIZE_SET,
    )
    manager.set_current_client_cert_details.uri = True
    # As the library's servers: HTTP/1.0 is served, and "host." is "host";
    # policy hosts match any port, which Envoy's RBAC does once the port is
    # stripped (config/authorization.py).
    manager.http_protocol_options.accept_http_10 = True
    manager.strip_trailing_host_dot = True
    manager.strip_any_host_port = True
    apply_normalization(manager, normalization)
    if normalization != "DECODE_AND_MERGE_SLASHES":
        # As the library (CVE-2021-31920): an escaped slash is refused, not
        # forwarded for the application to decode past the policy's view.
        manager.path_with_escaped_slashes_action = hcm_pb2.HttpConnectionManager.REJECT_REQUEST
    return manager


def app_cluster(port: int, app_port: int) -> cluster_pb2.Cluster:
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=APP_ADDRESS, port_value=app_port)
            )
        )
    )
    cluster = cluster_pb2.Cluster(
        name=inbound_cluster_name(port),
        type=cluster_pb2.Cluster.STATIC,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=inbound_cluster_name(port),
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])],
        ),
    )
    cluster.connect_timeout.CopyFrom(duration(1))
    return cluster
