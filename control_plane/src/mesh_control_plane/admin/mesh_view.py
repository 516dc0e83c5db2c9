"""The config as our library sees it: translate for a MESH client, then
decode with the library's own decoders.

`meshctl describe` and `meshctl simulate` read the result instead of the
control plane's config objects, so what they report (endpoints and their
health, which route matches) is what a real client would hold, down to the
decoder's reading of each field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.registry import Registry
from mesh_control_plane.translate import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    ClientKind,
    NodeInfo,
    translate,
)
from proxyless_mesh.model import Listener
from proxyless_mesh.xds_client import (
    XdsState,
    decode_cluster,
    decode_cluster_load_assignment,
    decode_listener,
    decode_route_configuration,
)

__all__ = ["VIEW_NODE", "mesh_view"]

VIEW_NODE = NodeInfo(id="meshctl", kind=ClientKind.MESH)
"""The node the tools translate for: a library client with no locality."""


def mesh_view(config: MeshConfig, registry: Registry, node: NodeInfo = VIEW_NODE) -> XdsState:
    """Every resource `node` may ask for, decoded, as one XdsState.

    Raises proxyless_mesh.errors.XdsResourceError if the library would NACK
    a resource: the tools then say so instead of guessing.
    """
    if node is VIEW_NODE and config.sidecars:  # the tools' view: the mesh, not one workload's
        config = replace(config, sidecars=())
    resources = translate(config, registry, node).resources
    return XdsState(
        listeners=MappingProxyType(_client_listeners(resources.get(LISTENER, {}))),
        route_configs=MappingProxyType(
            {n: decode_route_configuration(m) for n, m in resources.get(ROUTE, {}).items()}
        ),
        clusters=MappingProxyType(
            {n: decode_cluster(m) for n, m in resources.get(CLUSTER, {}).items()}
        ),
        assignments=MappingProxyType(
            {n: decode_cluster_load_assignment(m) for n, m in resources.get(ENDPOINT, {}).items()}
        ),
    )


def _client_listeners(messages: Mapping[str, Any]) -> dict[str, Listener]:
    """The outbound (client-side) listeners; inbound ones are not routed."""
    out = {}
    for name, message in messages.items():
        decoded = decode_listener(message)
        if isinstance(decoded, Listener):
            out[name] = decoded
    return out
