"""Gateway TLS servers with mode AUTO_PASSTHROUGH: mTLS routed by the SNI Istio
clients set, with no VirtualService.

An Istio sidecar names the destination in the SNI of its mTLS connections:
``outbound_.<port>_.<subset>_.<host>`` (``_`` for no subset; Istio's
BuildDNSSrvSubsetKey). An AUTO_PASSTHROUGH server (Istio's cross-network
gateway, port 15443) routes such a connection to that service port and
subset without decrypting it. As istiod does, each cluster of a service a
server host admits (namespace and wildcard, GatewayHost.admits) gets a filter
chain matched by its SNI name, proxying the bytes to an "SNI-DNAT" cluster of
the same name: the endpoints of the ordinary cluster (its EDS resource, by
``service_name``) and no TLS of its own, so the client's mTLS ends at the
service, which sees the client's identity, not the gateway's. An SNI no
cluster has matches no chain: Envoy closes the connection.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from mesh_control_plane.config.parse_gateway import Gateway, GatewayServer
from mesh_control_plane.translate.clusters import ClusterSpec, build_cluster, cluster_specs
from mesh_control_plane.translate.index import MeshIndex
from mesh_control_plane.translate.node import NodeInfo
from mesh_control_plane.translate.protos import pack

AUTO_PASSTHROUGH = "AUTO_PASSTHROUGH"
TCP_PROXY = "envoy.filters.network.tcp_proxy"


def sni_name(spec: ClusterSpec) -> str:
    """The SNI (and SNI-DNAT cluster name) Istio clients use for `spec`'s cluster."""
    subset = spec.subset.name if spec.subset else ""
    return f"outbound_.{spec.port.number}_.{subset}_.{spec.service.host}"


def _admitted(specs: Iterable[ClusterSpec], server: GatewayServer) -> list[ClusterSpec]:
    return [
        spec
        for spec in specs
        if any(h.admits(spec.service.namespace, spec.service.host) for h in server.hosts)
    ]


def auto_passthrough_chains(
    index: MeshIndex, servers: Iterable[GatewayServer], port: int
) -> list[listener_components_pb2.FilterChain]:
    """One chain per SNI name of a cluster an AUTO_PASSTHROUGH server admits."""
    specs = cluster_specs(index)
    names = {
        sni_name(spec)
        for server in servers
        if server.tls.mode == AUTO_PASSTHROUGH
        for spec in _admitted(specs, server)
    }
    chains = []
    for name in sorted(names):
        proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=name, cluster=name)
        chain = listener_components_pb2.FilterChain(
            filters=[listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(proxy))]
        )
        chain.filter_chain_match.server_names.append(name)
        chains.append(chain)
    return chains


def sni_dnat_clusters(
    gateways: Iterable[Gateway], specs: Iterable[ClusterSpec], node: NodeInfo
) -> list[cluster_pb2.Cluster]:
    """The SNI-DNAT clusters the AUTO_PASSTHROUGH servers of `gateways` route to."""
    specs = list(specs)
    admitted = {
        spec.name: spec
        for gateway in gateways
        for server in gateway.servers
        if server.tls.mode == AUTO_PASSTHROUGH
        for spec in _admitted(specs, server)
    }
    clusters = []
    for spec in admitted.values():
        cluster = build_cluster(spec, node.kind)
        cluster.name = sni_name(spec)
        cluster.eds_cluster_config.service_name = spec.name  # the ordinary cluster's endpoints
        clusters.append(cluster)
    return clusters
