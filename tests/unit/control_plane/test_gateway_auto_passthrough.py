"""Gateway TLS servers with mode AUTO_PASSTHROUGH: a chain per SNI Istio
clients set (outbound_.PORT_.SUBSET_.HOST) of each cluster a server host
admits, to an SNI-DNAT cluster with the ordinary cluster's endpoints and no
TLS of its own (translate/gateway_sni.py)."""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from mesh_control_plane.translate import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ClientKind,
    NodeInfo,
    check_consistency,
)

from .test_gateway import GATEWAY_NODE, SERVICE, load, run

CROSS_NETWORK = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: cross-network, namespace: shop}
spec:
  selector: {istio: ingress}
  servers:
  - port: {number: 15443, name: tls, protocol: TLS}
    hosts: ["shop/reviews.shop.mesh"]
    tls: {mode: AUTO_PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.shop.mesh
  subsets: [{name: v1, labels: {version: v1}}]
"""
NAMES = ["outbound_.8080_._.reviews.shop.mesh", "outbound_.8080_.v1_.reviews.shop.mesh"]


def test_each_admitted_cluster_gets_a_chain_by_its_istio_sni_and_an_sni_dnat_cluster() -> None:
    rs = run(load(SERVICE, CROSS_NETWORK), GATEWAY_NODE)
    listener: Any = rs.resources[LISTENER]["0.0.0.0_15443"]
    assert listener.listener_filters[0].name == "envoy.filters.listener.tls_inspector"
    # ratings.shop.mesh is not among the server's hosts: no chain, no cluster.
    assert [list(c.filter_chain_match.server_names) for c in listener.filter_chains] == [
        [name] for name in NAMES
    ]
    for chain, name in zip(listener.filter_chains, NAMES, strict=True):
        assert not chain.HasField("transport_socket")  # never decrypted
        proxy = tcp_proxy_pb2.TcpProxy()
        chain.filters[0].typed_config.Unpack(proxy)
        assert proxy.cluster == name
        cluster: Any = rs.resources[CLUSTER][name]
        assert not cluster.HasField("transport_socket")  # the client's mTLS goes through
        ordinary = cluster.eds_cluster_config.service_name
        assert ordinary == "outbound|8080|" + name.split("_.")[2] + "|reviews.shop.mesh"
        assert ordinary in rs.resources[ENDPOINT]
    # The ordinary cluster keeps the gateway's own mTLS for its other servers.
    assert rs.resources[CLUSTER]["outbound|8080||reviews.shop.mesh"].HasField("transport_socket")
    assert not [n for n in rs.resources[CLUSTER] if "ratings" in n and n.startswith("outbound_")]
    assert check_consistency(rs) == []


def test_a_wildcard_host_admits_every_service_and_other_gateways_get_none() -> None:
    wide = CROSS_NETWORK.replace('"shop/reviews.shop.mesh"', '"*/*"')
    rs = run(load(SERVICE, wide), GATEWAY_NODE)
    dnat = sorted(n for n in rs.resources[CLUSTER] if n.startswith("outbound_"))
    assert dnat == ["outbound_.8080_._.ratings.shop.mesh", *NAMES]
    sidecar = NodeInfo(id="e", kind=ClientKind.ENVOY)
    elsewhere = run(load(SERVICE, wide), sidecar)
    assert not [n for n in elsewhere.resources[CLUSTER] if n.startswith("outbound_")]
