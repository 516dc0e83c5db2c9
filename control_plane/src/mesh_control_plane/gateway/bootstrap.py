"""The Envoy bootstrap of a gateway or a sidecar: who it is, where ADS and SDS are.

Everything but the static clusters comes over ADS from the control plane
(listeners, routes, clusters, endpoints); secrets come from the agent's SDS
socket (cluster ``sds-grpc``, as in Istio), so keys never travel to or from
the control plane; TCP access logs go to the agent on the same socket
(``mesh-als``, translate/tcp_telemetry.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh_control_plane.translate.node import (
    BIND_ADDRESS_METADATA_KEY,
    FREE_PORTS_METADATA_KEY,
    INBOUND_PORTS_METADATA_KEY,
    INSTANCE_IPS_METADATA_KEY,
    LABELS_METADATA_KEY,
    NAMESPACE_METADATA_KEY,
    OUTBOUND_PORT_METADATA_KEY,
    OUTBOUND_TCP_METADATA_KEY,
    ROUTER_ID_PREFIX,
    SERVICE_ACCOUNT_METADATA_KEY,
    SIDECAR_ID_PREFIX,
)
from mesh_control_plane.translate.sds import SDS_CLUSTER
from mesh_control_plane.translate.tcp_telemetry import ALS_CLUSTER

XDS_CLUSTER = "xds-grpc"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass(frozen=True)
class ProxyNode:
    """A gateway (`sidecar` False) or a sidecar beside one workload."""

    name: str
    namespace: str
    service_account: str
    labels: Mapping[str, str] = field(default_factory=dict)
    bind_address: str = "0.0.0.0"
    free_ports: bool = False
    sidecar: bool = False
    inbound_ports: tuple[tuple[int, int], ...] = ()  # (declared port, application port)
    outbound_port: int = 15001
    instance_ips: tuple[str, ...] = ()
    outbound_tcp: tuple[tuple[str, int, int], ...] = ()  # (host, port, local port)

    @property
    def node_id(self) -> str:
        """Istio's form: ``<router|sidecar>~<ip>~<pod>.<ns>~<ns>.svc.cluster.local``."""
        ip = "127.0.0.1" if self.bind_address == "0.0.0.0" else self.bind_address
        pod, domain = f"{self.name}.{self.namespace}", f"{self.namespace}.svc.cluster.local"
        prefix = SIDECAR_ID_PREFIX if self.sidecar else ROUTER_ID_PREFIX
        return f"{prefix}{ip}~{pod}~{domain}"


def proxy_bootstrap(node: ProxyNode, xds_address: str, sds_socket: str) -> dict[str, Any]:
    host, _, port = xds_address.rpartition(":")
    metadata: dict[str, Any] = {
        LABELS_METADATA_KEY: dict(node.labels),
        NAMESPACE_METADATA_KEY: node.namespace,
        SERVICE_ACCOUNT_METADATA_KEY: node.service_account,
        BIND_ADDRESS_METADATA_KEY: node.bind_address,
        FREE_PORTS_METADATA_KEY: "true" if node.free_ports else "false",
    }
    if node.sidecar:
        metadata[OUTBOUND_PORT_METADATA_KEY] = str(node.outbound_port)
        metadata[INBOUND_PORTS_METADATA_KEY] = ",".join(f"{p}={a}" for p, a in node.inbound_ports)
        metadata[INSTANCE_IPS_METADATA_KEY] = ",".join(node.instance_ips)
        metadata[OUTBOUND_TCP_METADATA_KEY] = ",".join(
            f"{host}:{port}={local}" for host, port, local in node.outbound_tcp
        )
    address = {"socket_address": {"address": host or "127.0.0.1", "port_value": int(port)}}
    return {
        "node": {
            "id": node.node_id,
            "cluster": f"{node.name}.{node.namespace}",
            "metadata": metadata,
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                _grpc_cluster(XDS_CLUSTER, address, "STRICT_DNS"),
                _grpc_cluster(SDS_CLUSTER, {"pipe": {"path": sds_socket}}, "STATIC"),
                # the agent's access-log service (istio_tcp_*), on the same socket
                _grpc_cluster(ALS_CLUSTER, {"pipe": {"path": sds_socket}}, "STATIC"),
            ]
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }


def _grpc_cluster(name: str, address: dict[str, Any], kind: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": kind,
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
