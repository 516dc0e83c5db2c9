"""The xDS client: one ADS (State of the World) stream that follows listeners
to their routes, clusters and endpoints, ACKs what it can use, NACKs what it
cannot (keeping the last good value), and publishes an immutable `XdsState`.
"""

from proxyless_mesh.xds_client._backoff import WaitStrategy, default_wait
from proxyless_mesh.xds_client._client import XdsClient, build_node
from proxyless_mesh.xds_client._csds import client_config
from proxyless_mesh.xds_client._decode import (
    decode_cluster,
    decode_cluster_load_assignment,
    decode_listener,
    decode_route_configuration,
)
from proxyless_mesh.xds_client._disk_cache import config_cache_path
from proxyless_mesh.xds_client._state import ClientStatus, ResourceStatus, XdsState
from proxyless_mesh.xds_client._types import ResourceType

__all__ = [
    "ClientStatus",
    "ResourceStatus",
    "ResourceType",
    "WaitStrategy",
    "XdsClient",
    "XdsState",
    "build_node",
    "client_config",
    "config_cache_path",
    "decode_cluster",
    "decode_cluster_load_assignment",
    "decode_listener",
    "decode_route_configuration",
    "default_wait",
]
