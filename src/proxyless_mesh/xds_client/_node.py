"""The envoy.config.core.v3.Node an ADS client sends: as the field mapping
`_wire.encode` takes (node_fields, what the client sends), and as protobuf
(build_node, for CSDS: diagnostics serves it with grpcio's generated
classes, server side)."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.xds_client._codec import struct_fields

__all__ = ["CLIENT_FEATURES", "build_node", "node_fields"]

CLIENT_FEATURES = ("envoy.lb.does_not_support_overprovisioning", "xds.config.resource-in-sotw")


def _package_version() -> str:
    try:
        return metadata.version("proxyless-mesh")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def node_fields(bootstrap: Bootstrap, user_agent_name: str) -> dict[str, Any]:
    """The envoy.config.core.v3.Node sent on the first request of each stream,
    as the field mapping `_wire.encode` takes (build_node: the same as protobuf)."""
    fields: dict[str, Any] = {
        "id": bootstrap.node_id,
        "cluster": bootstrap.node_cluster,
        "user_agent_name": user_agent_name,
        "user_agent_version": _package_version(),
        "client_features": list(CLIENT_FEATURES),
        "locality": {
            "region": bootstrap.locality.region,
            "zone": bootstrap.locality.zone,
            "sub_zone": bootstrap.locality.sub_zone,
        },
    }
    if bootstrap.node_metadata:
        fields["metadata"] = struct_fields(_plain(bootstrap.node_metadata))
    return fields


def build_node(bootstrap: Bootstrap, user_agent_name: str) -> Any:
    """The envoy.config.core.v3.Node sent on the first request of each stream."""
    from envoy.config.core.v3 import base_pb2

    node = base_pb2.Node(
        id=bootstrap.node_id,
        cluster=bootstrap.node_cluster,
        user_agent_name=user_agent_name,
        user_agent_version=_package_version(),
        client_features=list(CLIENT_FEATURES),
    )
    node.locality.region = bootstrap.locality.region
    node.locality.zone = bootstrap.locality.zone
    node.locality.sub_zone = bootstrap.locality.sub_zone
    if bootstrap.node_metadata:
        node.metadata.update(_plain(bootstrap.node_metadata))
    return node


def _plain(value: Any) -> Any:
    """Mapping proxies -> dicts, tuples -> lists, as Struct.update wants."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
