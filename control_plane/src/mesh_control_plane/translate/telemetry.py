"""Telemetry resources -> the library clients they apply to.

Istio's scoping: a Telemetry without a selector in the root namespace
applies mesh-wide, one without a selector in a namespace to that
namespace's workloads, one with a selector to the matching workloads of its
namespace. A workload gets the specs that apply, least specific first, and
the library merges them (`proxyless_mesh.telemetry.policy_from_specs`).
Where several apply at one level, Istio uses the oldest; this control plane
has no creation times and uses the first by name.

They travel as node-scoped metadata on the library's listeners (client and
inbound): `metadata.filter_metadata["proxyless_mesh.io/telemetry"]` =
`{"specs": [...]}`. Only library (MESH) nodes get it: grpcio and Envoy
would ignore it, but there is no reason to send it to them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf.message import Message

from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.translate.node import NodeInfo

TELEMETRY_METADATA = "proxyless_mesh.io/telemetry"


def telemetry_specs(config: MeshConfig, node: NodeInfo) -> list[Mapping[str, Any]]:
    root = config.settings.root_namespace
    labels = dict(node.labels)
    mesh = [t for t in config.telemetries if t.meta.namespace == root and t.selector is None]
    namespace = [
        t
        for t in config.telemetries
        if t.meta.namespace == node.namespace != root and t.selector is None
    ]
    workload = [
        t
        for t in config.telemetries
        if t.meta.namespace == node.namespace
        and t.selector is not None
        and all(labels.get(k) == v for k, v in t.selector.items())
    ]
    return [level[0].spec for level in (mesh, namespace, workload) if level]


def attach_telemetry(listeners: Iterable[Message], specs: list[Mapping[str, Any]]) -> None:
    """Put the specs on every listener (nothing when none apply)."""
    if not specs:
        return
    for listener in listeners:
        listener.metadata.filter_metadata[TELEMETRY_METADATA].update(  # type: ignore[attr-defined]
            {"specs": [dict(spec) for spec in specs]}
        )
