"""Istio's TCP metrics for the agent's Envoy, from its TCP access logs.

Envoy logs each tcp_proxy connection to the agent by gRPC
(envoy.service.accesslog.v3, set up by translate/tcp_telemetry.py): when the
upstream connects (source side), every 15 s while open, and at the end, each entry with the
connection's bytes so far. The agent keeps the last count per connection
(`stream_id`) and adds the difference to Istio's counters:

- istio_tcp_connections_opened_total: a connection first seen;
- istio_tcp_connections_closed_total: its last entry;
- istio_tcp_received_bytes_total / istio_tcp_sent_bytes_total: bytes from / to
  the downstream side, as Istio's proxies count them.

The labels are the library's (proxyless_mesh.telemetry.label_prefix, with
Istio's semantics per reporter), then `request_protocol="tcp"` and
`response_flags` (Envoy's short codes, "-" when none); Istio's TCP metrics
have no response_code or grpc_response_status. The destination of a
source-reported connection is the upstream endpoint's Istio telemetry metadata
and the SPIFFE ID it presented (which also names the destination's namespace
when the metadata does not); the source of a destination-reported one is
the SPIFFE ID the downstream presented (TCP has no metadata exchange header:
its workload is unknown, its namespace the certificate's), and its service the
inbound port's (translate/tcp_telemetry.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from typing import Any

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2

from mesh_control_plane.translate.tcp_telemetry import (
    DESTINATION_SERVICE_TAG,
    DESTINATION_WORKLOAD_TAG,
    DOWNSTREAM_PEER_TAG,
    LOG_NAME_PREFIX,
    UPSTREAM_PEER_TAG,
)
from proxyless_mesh.security import SpiffeId
from proxyless_mesh.telemetry import (
    NO_PEER,
    STANDARD_LABELS,
    Workload,
    endpoint_peer,
    label_prefix,
    service_labels,
)

__all__ = ["ALS_SERVICE", "AccessLogServicer", "TcpMetrics"]

log = logging.getLogger(__name__)

ALS_SERVICE = "envoy.service.accesslog.v3.AccessLogService"
UNKNOWN = "unknown"
_PREFIX_LABELS = STANDARD_LABELS[: STANDARD_LABELS.index("request_protocol")]
LABELS = (*_PREFIX_LABELS, "request_protocol", "response_flags")
#: Envoy's response flag short codes (its access-log %RESPONSE_FLAGS%).
_FLAGS = {
    "failed_local_healthcheck": "LH",
    "no_healthy_upstream": "UH",
    "upstream_request_timeout": "UT",
    "local_reset": "LR",
    "upstream_remote_reset": "UR",
    "upstream_connection_failure": "UF",
    "upstream_connection_termination": "UC",
    "upstream_overflow": "UO",
    "no_route_found": "NR",
    "delay_injected": "DI",
    "fault_injected": "FI",
    "rate_limited": "RL",
    "rate_limit_service_error": "RLSE",
    "downstream_connection_termination": "DC",
    "upstream_retry_limit_exceeded": "URX",
    "stream_idle_timeout": "SI",
    "invalid_envoy_request_headers": "IH",
    "downstream_protocol_error": "DPE",
    "upstream_max_stream_duration_reached": "UMSDR",
    "response_from_cache_filter": "RFCF",
    "no_filter_config_found": "NFCF",
    "duration_timeout": "DT",
    "upstream_protocol_error": "UPE",
    "no_cluster_found": "NC",
    "overload_manager": "OM",
    "dns_resolution_failure": "DF",
    "downstream_remote_reset": "DR",
}
_METRICS = (  # name, help; the order of a label set's four counts
    ("istio_tcp_connections_opened_total", "TCP connections opened"),
    ("istio_tcp_connections_closed_total", "TCP connections closed"),
    ("istio_tcp_received_bytes_total", "Bytes received from the downstream side of TCP"),
    ("istio_tcp_sent_bytes_total", "Bytes sent to the downstream side of TCP"),
)
_END = accesslog_pb2.AccessLogType.TcpConnectionEnd
#: Open connections remembered at most (a flood of never-ended ones cannot grow
#: the agent); and label sets at most, beyond which new ones are dropped (logged).
MAX_OPEN = 65536
MAX_LABEL_SETS = 4096


class TcpMetrics:
    """The four counters per label set, for the Envoy of workload `me`."""

    def __init__(self, me: Workload) -> None:
        self.me = me
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._open: dict[str, tuple[int, int]] = {}  # stream_id -> (received, sent) counted

    def record(self, reporter: str, entry: accesslog_pb2.TCPAccessLogEntry) -> None:
        common = entry.common_properties
        labels = self._labels(reporter, common)
        counts = self._counts.get(labels)
        if counts is None:
            if len(self._counts) >= MAX_LABEL_SETS:
                log.warning("istio_tcp_*: more than %d label sets, entry dropped", MAX_LABEL_SETS)
                return
            counts = self._counts[labels] = [0, 0, 0, 0]
        key = common.stream_id or f"{common.downstream_remote_address}{common.start_time}"
        received, sent = (
            entry.connection_properties.received_bytes,
            entry.connection_properties.sent_bytes,
        )
        seen = self._open.pop(key, None)
        if seen is None:
            counts[0] += 1
            seen = (0, 0)
        counts[2] += max(0, received - seen[0])
        counts[3] += max(0, sent - seen[1])
        if common.access_log_type == _END:
            counts[1] += 1
        elif len(self._open) < MAX_OPEN:
            self._open[key] = (max(received, seen[0]), max(sent, seen[1]))

    def _labels(self, reporter: str, common: accesslog_pb2.AccessLogCommon) -> tuple[str, ...]:
        tags = common.custom_tags
        host = _cluster_host(common.upstream_cluster) or tags.get(DESTINATION_SERVICE_TAG, "")
        service = (host, *service_labels(host)) if host else ("unknown", "unknown", "unknown")
        if reporter == "source":
            principal = _san(tags.get(UPSTREAM_PEER_TAG, ""))
            peer = endpoint_peer(tags.get(DESTINATION_WORKLOAD_TAG, ""))
            if principal and peer.namespace == UNKNOWN:  # the certificate says it
                peer = replace(peer, namespace=_namespace(principal))
        else:
            principal = _san(tags.get(DOWNSTREAM_PEER_TAG, ""))
            peer = NO_PEER
        secure = bool(principal)  # a peer certificate: mTLS
        prefix = label_prefix(reporter, self.me, peer, service, secure, principal or UNKNOWN)
        return (*prefix, "tcp", _flags(common.response_flags))

    def prometheus(self) -> str:
        """The counters in Prometheus' text format."""
        lines: list[str] = []
        rows = sorted(self._counts.items())
        for i, (name, description) in enumerate(_METRICS):
            lines += [f"# HELP {name} {description}", f"# TYPE {name} counter"]
            lines += [f"{name}{{{_label_text(labels)}}} {counts[i]}" for labels, counts in rows]
        return "\n".join(lines) + "\n"


class AccessLogServicer:
    """envoy.service.accesslog.v3 StreamAccessLogs: TCP entries into `metrics`."""

    def __init__(self, metrics: TcpMetrics) -> None:
        self.metrics = metrics

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            ALS_SERVICE,
            {
                "StreamAccessLogs": grpc.stream_unary_rpc_method_handler(
                    self._stream,
                    request_deserializer=als_pb2.StreamAccessLogsMessage.FromString,
                    response_serializer=als_pb2.StreamAccessLogsResponse.SerializeToString,
                )
            },
        )

    async def _stream(
        self, messages: AsyncIterator[als_pb2.StreamAccessLogsMessage], context: Any
    ) -> als_pb2.StreamAccessLogsResponse:
        reporter = ""  # the stream's first message names its log
        async for message in messages:
            if message.HasField("identifier"):
                name = message.identifier.log_name
                reporter = (
                    name.removeprefix(LOG_NAME_PREFIX) if name.startswith(LOG_NAME_PREFIX) else ""
                )
            if reporter in ("source", "destination"):
                for entry in message.tcp_logs.log_entry:
                    self.metrics.record(reporter, entry)
        return als_pb2.StreamAccessLogsResponse()


def _cluster_host(cluster: str) -> str:
    """`outbound|7000|v1|echo.ns.svc.cluster.local` -> the host ("" otherwise)."""
    parts = cluster.split("|")
    return parts[3] if len(parts) == 4 else ""


def _namespace(principal: str) -> str:
    try:
        return SpiffeId.parse(principal).namespace
    except ValueError:
        return UNKNOWN


def _san(value: str) -> str:
    """A formatter's peer URI SAN: "-" or "" when there was no peer certificate."""
    return value.split(",")[0] if value and value != "-" else ""


def _flags(flags: accesslog_pb2.ResponseFlags) -> str:
    codes = [code for field, code in _FLAGS.items() if getattr(flags, field)]
    if flags.HasField("unauthorized_details"):
        codes.append("UAEX")
    return ",".join(codes) or "-"


def _label_text(values: Iterable[str]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in zip(LABELS, values, strict=True))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
