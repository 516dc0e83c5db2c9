"""The control plane's admin HTTP endpoint: /healthz, /status, /config_dump,
/describe, /simulate, /metrics."""

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
    "TextResponse",
    "config_dump",
    "describe_view",
    "healthz",
    "metrics_page",
    "node_config_dump",
    "simulate_view",
    "status",
]
