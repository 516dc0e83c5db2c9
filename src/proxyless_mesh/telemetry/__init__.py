"""Telemetry: Istio's standard metrics, traces and access logs, through the
OpenTelemetry API (the SDK and exporters are the application's choice: the
`otel` extra).

Outbound calls are recorded by the mesh transports and channels (turn
signals on or off with `Mesh(..., telemetry=TelemetryConfig(...))`); inbound
requests by the middleware and interceptors here, which wrap the
application outside the authorization middleware so refusals are counted.
"""

from proxyless_mesh.telemetry._b3 import B3Propagator
from proxyless_mesh.telemetry._config import PEER_HEADER, TelemetryConfig, Workload
from proxyless_mesh.telemetry._core import Call, QuietCall, Telemetry
from proxyless_mesh.telemetry._grpc_server import (
    AioTelemetryServerInterceptor,
    TelemetryServerInterceptor,
)
from proxyless_mesh.telemetry._inbound_http import TelemetryMiddleware, WsgiTelemetryMiddleware

__all__ = [
    "PEER_HEADER",
    "AioTelemetryServerInterceptor",
    "B3Propagator",
    "Call",
    "QuietCall",
    "Telemetry",
    "TelemetryConfig",
    "TelemetryMiddleware",
    "TelemetryServerInterceptor",
    "Workload",
    "WsgiTelemetryMiddleware",
]
