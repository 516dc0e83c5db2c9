"""Telemetry: Istio's standard metrics, traces and access logs. The request
metrics are kept in the native core and read on a scrape
(`Telemetry.prometheus_text()`, the mesh admin port's `/stats/prometheus`),
as a sidecar keeps its stats; metrics and traces also go through the
OpenTelemetry API (the SDK and exporters are the application's choice: the
`otel` extra).

Outbound calls are recorded by the mesh transports and channels (turn
signals on or off with `Mesh(..., telemetry=TelemetryConfig(...))`); inbound
requests by the telemetry middleware and interceptors of
`proxyless_mesh.integrations`, which wrap the application outside the
authorization middleware so refusals are counted. This package knows no
client or server library: the integrations adapt it to httpx, grpcio, ASGI
and WSGI, and call `hook_failed` when a telemetry hook raises.
"""

from proxyless_mesh.telemetry._b3 import B3Propagator
from proxyless_mesh.telemetry._call import LOCAL_REPLY_STATUS, Call, QuietCall
from proxyless_mesh.telemetry._call import _contained as hook_failed
from proxyless_mesh.telemetry._config import TelemetryConfig, service_labels
from proxyless_mesh.telemetry._labels import (
    DEFAULT_CLUSTER,
    NO_PEER,
    PEER_HEADER,
    PEER_ID_HEADER,
    Peer,
    Workload,
    canonical_revision,
    canonical_service,
    endpoint_peer,
    label_prefix,
)
from proxyless_mesh.telemetry._metrics import LABELS as STANDARD_LABELS
from proxyless_mesh.telemetry._metrics import (
    ClusterCounts,
    ClusterLimitMetrics,
    IdentityMetrics,
    metrics_meter,
)
from proxyless_mesh.telemetry._policy import (
    NO_POLICY,
    TelemetryPolicy,
    TelemetrySpecError,
    check_spec,
    policy_from_specs,
)
from proxyless_mesh.telemetry._telemetry import Telemetry

__all__ = [
    "DEFAULT_CLUSTER",
    "LOCAL_REPLY_STATUS",
    "NO_PEER",
    "NO_POLICY",
    "PEER_HEADER",
    "PEER_ID_HEADER",
    "STANDARD_LABELS",
    "B3Propagator",
    "Call",
    "ClusterCounts",
    "ClusterLimitMetrics",
    "IdentityMetrics",
    "Peer",
    "QuietCall",
    "Telemetry",
    "TelemetryConfig",
    "TelemetryPolicy",
    "TelemetrySpecError",
    "Workload",
    "canonical_revision",
    "canonical_service",
    "check_spec",
    "endpoint_peer",
    "hook_failed",
    "label_prefix",
    "metrics_meter",
    "policy_from_specs",
    "service_labels",
]
