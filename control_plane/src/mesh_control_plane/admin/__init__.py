"""The control plane's admin HTTP endpoint: /healthz, /status, /config_dump."""

from mesh_control_plane.admin.server import JsonHttpServer, JsonView
from mesh_control_plane.admin.views import CONFIG_DUMP_NODE, config_dump, healthz, status

__all__ = ["CONFIG_DUMP_NODE", "JsonHttpServer", "JsonView", "config_dump", "healthz", "status"]
