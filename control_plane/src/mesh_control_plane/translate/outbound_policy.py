"""`outboundTrafficPolicy`: what a client does with a host outside the mesh.

The mode comes from the workload's Sidecar when it sets one, else from the
mesh default (Istio's meshConfig.outboundTrafficPolicy: `meshctl
control-plane --outbound-traffic-policy`, else the istio ConfigMap's).

Library clients decide by themselves (their `Mesh(outbound_policy=...)`); the
control plane tells them the mode that overrides it with one more client
listener, `virtualOutbound` (Istio's name for the outbound catch-all), which
the library watches beside every host it resolves: an api listener with an
empty inline route table, carrying the mode as listener metadata. No Sidecar
mode and no mesh default flag, no listener: the client's own policy stands.
grpcio's xDS client refuses hosts outside the mesh whatever the mode.

Envoy (a sidecar, or a bare Envoy on the outbound port) gets Istio's catch-all
virtual host in its `virtualOutbound` route table, matched after every mesh
host: REGISTRY_ONLY is `block_all`, a 502 direct response (Istio's sidecar
answers so, and its telemetry reports the route as BlackHoleCluster);
ALLOW_ANY (Istio's default when nothing says otherwise) is `allow_any`, a
route to `PassthroughCluster`. Istio's PassthroughCluster is ORIGINAL_DST
behind iptables capture; here the application calls the outbound port with no
capture, so the destination is the Host header: a dynamic forward proxy
cluster (with its HTTP filter on the outbound listener) that resolves the
host's name, or takes its IP, and connects there in plaintext.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.clusters.dynamic_forward_proxy.v3 import cluster_pb2 as dfp_cluster_pb2
from envoy.extensions.common.dynamic_forward_proxy.v3 import dns_cache_pb2
from envoy.extensions.filters.http.dynamic_forward_proxy.v3 import (
    dynamic_forward_proxy_pb2 as dfp_filter_pb2,
)
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.message import Message

from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.config.parse_sidecar import sidecar_for
from mesh_control_plane.translate.node import NodeInfo
from mesh_control_plane.translate.protos import duration, pack, rds_connection_manager
from proxyless_mesh.model import OUTBOUND_POLICY_LISTENER, OUTBOUND_POLICY_METADATA

ALLOW_ANY = "ALLOW_ANY"
REGISTRY_ONLY = "REGISTRY_ONLY"
BLOCK_ALL = "block_all"  # Istio's route and virtual host names
ALLOW_ANY_ROUTE = "allow_any"
PASSTHROUGH_CLUSTER = "PassthroughCluster"
BLOCKED_STATUS = 502
_DNS_CACHE = "passthrough"
_DFP_FILTER = "envoy.filters.http.dynamic_forward_proxy"
_DFP_CLUSTER = "envoy.clusters.dynamic_forward_proxy"
_CONNECT_TIMEOUT = 10.0  # Istio's meshConfig.connectTimeout default


def outbound_mode(config: MeshConfig, node: NodeInfo) -> str | None:
    """The node's Sidecar mode, else the mesh default flag, else None."""
    root = config.settings.root_namespace
    sidecar = sidecar_for(config.sidecars, node.namespace, dict(node.labels), root)
    if sidecar is not None and sidecar.outbound_policy is not None:
        return sidecar.outbound_policy
    return config.settings.outbound_policy


def outbound_policy_listeners(config: MeshConfig, node: NodeInfo) -> list[Message]:
    """[the listener carrying the mode that overrides the library client's
    own], or [] when neither a Sidecar nor the mesh default sets one."""
    mode = outbound_mode(config, node)
    if mode is None:
        return []
    manager = rds_connection_manager(OUTBOUND_POLICY_LISTENER)
    manager.route_config.CopyFrom(route_pb2.RouteConfiguration(name=OUTBOUND_POLICY_LISTENER))
    listener = listener_pb2.Listener(
        name=OUTBOUND_POLICY_LISTENER,
        api_listener=api_listener_pb2.ApiListener(api_listener=pack(manager)),
    )
    listener.metadata.filter_metadata[OUTBOUND_POLICY_METADATA].update({"mode": mode})
    return [listener]


def envoy_mode(config: MeshConfig, node: NodeInfo) -> str:
    """An Envoy's mode: as outbound_mode, Istio's ALLOW_ANY when nothing says."""
    return outbound_mode(config, node) or ALLOW_ANY


def catch_all_virtual_host(mode: str) -> rc_pb2.VirtualHost:
    """Istio's last virtual host of the outbound route table (domain `*`)."""
    route = rc_pb2.Route(match=rc_pb2.RouteMatch(prefix="/"))
    if mode == REGISTRY_ONLY:
        route.name = BLOCK_ALL
        route.direct_response.status = BLOCKED_STATUS
        return rc_pb2.VirtualHost(name=BLOCK_ALL, domains=["*"], routes=[route])
    route.name = ALLOW_ANY_ROUTE
    route.route.cluster = PASSTHROUGH_CLUSTER
    route.route.timeout.CopyFrom(duration(0))  # no timeout, as Istio's passthrough
    return rc_pb2.VirtualHost(name=ALLOW_ANY_ROUTE, domains=["*"], routes=[route])


def _dns_cache() -> dns_cache_pb2.DnsCacheConfig:
    return dns_cache_pb2.DnsCacheConfig(
        name=_DNS_CACHE, dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED
    )


def passthrough_filter() -> hcm_pb2.HttpFilter:
    """The dynamic forward proxy filter: resolves the Host of requests routed
    to PassthroughCluster (it leaves every other route alone)."""
    config = dfp_filter_pb2.FilterConfig(dns_cache_config=_dns_cache())
    return hcm_pb2.HttpFilter(name=_DFP_FILTER, typed_config=pack(config))


def passthrough_clusters(mode: str) -> list[Message]:
    """[PassthroughCluster] under ALLOW_ANY, else []."""
    if mode != ALLOW_ANY:
        return []
    config = dfp_cluster_pb2.ClusterConfig(dns_cache_config=_dns_cache())
    return [
        cluster_pb2.Cluster(
            name=PASSTHROUGH_CLUSTER,
            connect_timeout=duration(_CONNECT_TIMEOUT),
            lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
            cluster_type=cluster_pb2.Cluster.CustomClusterType(
                name=_DFP_CLUSTER, typed_config=pack(config)
            ),
        )
    ]
