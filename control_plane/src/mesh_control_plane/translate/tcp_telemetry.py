"""Istio's TCP metrics for the Envoys an agent runs (gateways, sidecars): each
tcp_proxy logs its connections by gRPC (Envoy's access-log service, TCP
entries) to the agent, which counts them as `istio_tcp_*` (gateway/
tcp_metrics.py). Istio's proxies count them in their stats filter; Envoy has
none, so the access log carries what the labels need:

- the log name says the reporter (`source`: the connection leaves this proxy
  for a service; `destination`: it arrives at the workload beside it);
- custom tags: the upstream endpoint's Istio telemetry metadata (the
  destination workload, as istiod writes it on EDS endpoints), the peers'
  SPIFFE IDs (Envoy's formatter: empty without mTLS) and, on a sidecar's
  inbound port (whose cluster `inbound|<port>||` names no service), the
  service the port belongs to, as Istio's stats read it from the inbound
  cluster's metadata;
- an entry when the upstream connects (source side only), every
  TCP_FLUSH_SECONDS while open, and one at the end: bytes are cumulative per
  connection (`stream_id`). On the destination side tcp_proxy connects to the
  application before the caller's TLS handshake has ended, so that entry
  could not name the caller (nor say mTLS): the connection is first counted
  at its first periodic entry or its end.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.type.metadata.v3 import metadata_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from google.protobuf import duration_pb2

from mesh_control_plane.translate.protos import pack

__all__ = [
    "ALS_CLUSTER",
    "DESTINATION_SERVICE_TAG",
    "DESTINATION_WORKLOAD_TAG",
    "DOWNSTREAM_PEER_TAG",
    "LOG_NAME_PREFIX",
    "TCP_FLUSH_SECONDS",
    "UPSTREAM_PEER_TAG",
    "add_tcp_telemetry",
]

#: The agent's access-log service, on its SDS socket (gateway/bootstrap.py).
ALS_CLUSTER = "mesh-als"
LOG_NAME_PREFIX = "istio_tcp."  # + the reporter
#: Istio's stats filter reports open TCP connections every 15 s (tcp_reporting_duration).
TCP_FLUSH_SECONDS = 15
DESTINATION_WORKLOAD_TAG = "destination_workload"
DESTINATION_SERVICE_TAG = "destination_service"
UPSTREAM_PEER_TAG = "upstream_peer"
DOWNSTREAM_PEER_TAG = "downstream_peer"
TCP_GRPC_LOGGER = "envoy.access_loggers.tcp_grpc"


def add_tcp_telemetry(proxy: tcp_proxy_pb2.TcpProxy, reporter: str, service: str = "") -> None:
    """Log `proxy`'s connections to the agent as `reporter` ("source" or
    "destination"); `service`: the destination service's host when the
    upstream cluster does not name it (a sidecar's inbound port)."""
    endpoint = metadata_pb2.MetadataKind(host=metadata_pb2.MetadataKind.Host())
    workload_key = metadata_pb2.MetadataKey(
        key="istio", path=[metadata_pb2.MetadataKey.PathSegment(key="workload")]
    )
    config = als_pb2.TcpGrpcAccessLogConfig(
        common_config=als_pb2.CommonGrpcAccessLogConfig(
            log_name=LOG_NAME_PREFIX + reporter,
            grpc_service=grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=ALS_CLUSTER)
            ),
            transport_api_version=config_source_pb2.V3,
            custom_tags=[
                custom_tag_pb2.CustomTag(
                    tag=DESTINATION_WORKLOAD_TAG,
                    metadata=custom_tag_pb2.CustomTag.Metadata(
                        kind=endpoint, metadata_key=workload_key
                    ),
                ),
                custom_tag_pb2.CustomTag(tag=UPSTREAM_PEER_TAG, value="%UPSTREAM_PEER_URI_SAN%"),
                custom_tag_pb2.CustomTag(
                    tag=DOWNSTREAM_PEER_TAG, value="%DOWNSTREAM_PEER_URI_SAN%"
                ),
            ],
        )
    )
    if service:
        config.common_config.custom_tags.add(
            tag=DESTINATION_SERVICE_TAG, literal=custom_tag_pb2.CustomTag.Literal(value=service)
        )
    proxy.access_log.append(
        accesslog_pb2.AccessLog(name=TCP_GRPC_LOGGER, typed_config=pack(config))
    )
    proxy.access_log_options.CopyFrom(
        tcp_proxy_pb2.TcpProxy.TcpAccessLogOptions(
            access_log_flush_interval=duration_pb2.Duration(seconds=TCP_FLUSH_SECONDS),
            flush_access_log_on_connected=reporter == "source",
        )
    )
