"""The control plane's admin HTTP endpoint: /healthz, /status, /config_dump,
/describe, /simulate, /metrics, and the web console (/console/..., /api/graph)."""

from mesh_control_plane.admin.console import PrometheusClient, console_pages, graph_view
from mesh_control_plane.admin.server import HttpError, JsonHttpServer, JsonView, TextResponse
from mesh_control_plane.admin.views import (
    CONFIG_DUMP_NODE,
    config_dump,
    describe_view,
    healthz,
    metrics_page,
    node_config_dump,
    simulate_view,
    status,
)

__all__ = [
    "CONFIG_DUMP_NODE",
    "HttpError",
    "JsonHttpServer",
    "JsonView",
    "PrometheusClient",
    "TextResponse",
    "config_dump",
    "console_pages",
    "describe_view",
    "graph_view",
    "healthz",
    "metrics_page",
    "node_config_dump",
    "simulate_view",
    "status",
]
