"""What the admin endpoints return, as plain JSON-able data.

Kept apart from the HTTP server so the payloads (which `meshctl status`
parses) are built and tested without sockets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format

from mesh_control_plane.translate import ClientKind, NodeInfo
from mesh_control_plane.xds.clients import ClientRecord, short_type_name
from mesh_control_plane.xds.snapshot import SnapshotCache

CONFIG_DUMP_NODE = NodeInfo(id="reference-mesh", kind=ClientKind.MESH)
"""The node config_dump translates for: what our library's clients receive."""


def healthz() -> dict[str, Any]:
    return {"status": "ok"}


def status(
    version: str, clients: Sequence[ClientRecord], config_errors: Sequence[str]
) -> dict[str, Any]:
    """`GET /status`: the version served, every connected client, config errors."""
    return {
        "version": version,
        "clients": [c.to_status() for c in clients],
        "config_errors": list(config_errors),
    }


def config_dump(cache: SnapshotCache, node: NodeInfo = CONFIG_DUMP_NODE) -> dict[str, Any]:
    """`GET /config_dump`: the resources `node`'s kind receives, by type and name."""
    resources = cache.resource_set(node).resources
    return {
        "version": cache.version,
        "kind": node.kind.name,
        "resources": {
            short_type_name(type_url): {
                name: json_format.MessageToDict(msg, preserving_proto_field_name=True)
                for name, msg in by_name.items()
            }
            for type_url, by_name in resources.items()
        },
    }
