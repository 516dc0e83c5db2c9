"""The Sidecar's `outboundTrafficPolicy` for library clients.

The library decides hosts outside the mesh by its own `outbound_policy`
(Mesh's argument, the "mesh default"); a Sidecar that sets the mode
overrides it for its workloads, as in Istio. The control plane says so with
one more client listener, `virtualOutbound` (Istio's name for the outbound
catch-all), which the library watches beside every host it resolves: an api
listener with an empty inline route table, carrying the mode as listener
metadata. No Sidecar mode, no listener: the client's own policy stands.
grpcio's xDS client and Envoy refuse hosts outside the mesh whatever the mode
(they get no such listener).
"""

from __future__ import annotations

from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.config.parse_sidecar import sidecar_for
from mesh_control_plane.translate.node import NodeInfo
from mesh_control_plane.translate.protos import pack, rds_connection_manager
from proxyless_mesh.model import OUTBOUND_POLICY_LISTENER, OUTBOUND_POLICY_METADATA


def outbound_policy_listeners(config: MeshConfig, node: NodeInfo) -> list[Message]:
    """[the listener carrying the node's Sidecar mode], or [] when none sets one."""
    root = config.settings.root_namespace
    sidecar = sidecar_for(config.sidecars, node.namespace, dict(node.labels), root)
    if sidecar is None or sidecar.outbound_policy is None:
        return []
    manager = rds_connection_manager(OUTBOUND_POLICY_LISTENER)
    manager.route_config.CopyFrom(route_pb2.RouteConfiguration(name=OUTBOUND_POLICY_LISTENER))
    listener = listener_pb2.Listener(
        name=OUTBOUND_POLICY_LISTENER,
        api_listener=api_listener_pb2.ApiListener(api_listener=pack(manager)),
    )
    listener.metadata.filter_metadata[OUTBOUND_POLICY_METADATA].update(
        {"mode": sidecar.outbound_policy}
    )
    return [listener]
