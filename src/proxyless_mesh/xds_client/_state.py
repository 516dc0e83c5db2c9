"""What the xDS client publishes: an immutable snapshot of the decoded config,
and per-resource status for `meshctl status` / CSDS."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from proxyless_mesh.model import (
    Cluster,
    ClusterLoadAssignment,
    InboundListener,
    Listener,
    RouteConfiguration,
)

__all__ = ["ClientStatus", "ResourceStatus", "XdsState", "cluster_names"]


def cluster_names(routes: RouteConfiguration) -> Iterator[str]:
    """Every cluster a route configuration can send traffic to (all weighted
    clusters of every route with a forwarding action)."""
    for vh in routes.virtual_hosts:
        for route in vh.routes:
            if route.action is not None:
                for wc in route.action.clusters:
                    yield wc.name


@dataclass(frozen=True)
class XdsState:
    """The decoded configuration at one moment. A new object is built for every
    applied update and never changed, so readers need no lock: they hold one
    reference and see a consistent picture."""

    listeners: Mapping[str, Listener] = field(default_factory=lambda: MappingProxyType({}))
    absent_listeners: frozenset[str] = frozenset()
    route_configs: Mapping[str, RouteConfiguration] = field(
        default_factory=lambda: MappingProxyType({})
    )
    clusters: Mapping[str, Cluster] = field(default_factory=lambda: MappingProxyType({}))
    assignments: Mapping[str, ClusterLoadAssignment] = field(
        default_factory=lambda: MappingProxyType({})
    )
    absent_clusters: frozenset[str] = frozenset()
    # Server listeners (watched with XdsClient.watch_inbound), by name; a
    # name known not to exist is in `absent_listeners`.
    inbound: Mapping[str, InboundListener] = field(default_factory=lambda: MappingProxyType({}))

    def route_config_for(self, listener_name: str) -> RouteConfiguration | None:
        """The listener's routes: inline in its HCM, or the RDS resource it names."""
        listener = self.listeners.get(listener_name)
        if listener is None:
            return None
        if listener.inline_routes is not None:
            return listener.inline_routes
        if listener.rds_name is None:
            return None
        return self.route_configs.get(listener.rds_name)

    def missing(self, listener_name: str) -> tuple[str, ...]:
        """What is still needed before `listener_name` can route, e.g.
        `("cluster 'b'", "endpoints 'a'")`; empty when resolved."""
        if listener_name in self.absent_listeners:
            return ()
        listener = self.listeners.get(listener_name)
        if listener is None:
            return (f"listener {listener_name!r}",)
        routes = self.route_config_for(listener_name)
        if routes is None:
            return (f"route configuration {listener.rds_name!r}",)
        out: list[str] = []
        for name in dict.fromkeys(cluster_names(routes)):
            if name in self.absent_clusters:
                continue
            cluster = self.clusters.get(name)
            if cluster is None:
                out.append(f"cluster {name!r}")
            elif cluster.eds_service_name not in self.assignments:
                out.append(f"endpoints {cluster.eds_service_name!r}")
        return tuple(out)

    def inbound_resolved(self, name: str) -> bool:
        """The server listener arrived, or is known not to exist."""
        return name in self.inbound or name in self.absent_listeners

    def is_resolved(self, listener_name: str) -> bool:
        """True when the listener is known not to exist, or it, its routes, every
        cluster they name and each cluster's endpoints are all present (clusters
        known not to exist count as resolved: requests to them fail fast)."""
        return not self.missing(listener_name)


class ClientStatus(enum.Enum):
    """Per-resource status, as CSDS's ClientResourceStatus names them."""

    REQUESTED = "REQUESTED"
    DOES_NOT_EXIST = "DOES_NOT_EXIST"
    ACKED = "ACKED"
    NACKED = "NACKED"


@dataclass(frozen=True, slots=True)
class ResourceStatus:
    """One subscribed resource. `version` is the version of the value in use
    (empty if none arrived yet); for NACKED, `error` is the reason and
    `error_version` the version of the rejected update. `xds_config` is the
    packed protobuf (`google.protobuf.Any`) of the value in use, kept as
    received so CSDS can show exactly what the client holds (None if none)."""

    type_url: str
    name: str
    status: ClientStatus
    version: str = ""
    error: str | None = None
    error_version: str | None = None
    xds_config: Any = field(default=None, compare=False, repr=False)
