"""Is a ResourceSet safe to push? Every reference between resources must resolve.

A client that is sent a listener whose route configuration, or a route whose
cluster, or a cluster whose endpoints never arrive waits (gRPC: 15 s) and then fails
its requests. go-control-plane refuses such snapshots (``Snapshot.Consistent``); we
report them so the server can refuse them too, naming what dangles.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2
from google.protobuf.message import Message

from mesh_control_plane.translate.protos import HCM_FILTER
from mesh_control_plane.translate.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, ResourceSet


def check_consistency(rs: ResourceSet) -> list[str]:
    """Problems found, one sentence each, sorted; ``[]`` when every LDS->RDS,
    RDS->CDS (route and mirror targets) and CDS->EDS reference resolves within
    the set."""
    routes = rs.resources.get(ROUTE, {})
    clusters = rs.resources.get(CLUSTER, {})
    endpoints = rs.resources.get(ENDPOINT, {})
    problems: list[str] = []
    for name, listener in rs.resources.get(LISTENER, {}).items():
        problems.extend(_listener_problems(name, listener, routes))
    for name, route_config in routes.items():
        for vhost, route, target in _route_clusters(route_config):
            if target not in clusters and not _undefined_subset(target, rs.undefined_subsets):
                problems.append(
                    f"RouteConfiguration {name!r} virtual host {vhost!r} route {route!r} "
                    f"sends to Cluster {target!r}, which is not in the set"
                )
    for name, cluster in clusters.items():
        wanted = _endpoints_name(name, cluster)
        if wanted is not None and wanted not in endpoints:
            problems.append(
                f"Cluster {name!r} takes endpoints from ClusterLoadAssignment {wanted!r}, "
                "which is not in the set"
            )
    return sorted(problems)


def _undefined_subset(target: str, undefined: frozenset[tuple[str, str]]) -> bool:
    """A cluster (`outbound|port|subset|host`) of a subset no DestinationRule
    defines (yet): Istio pushes such routes and Envoy answers 503 NC; the
    loader warns about them."""
    parts = target.split("|")
    return len(parts) == 4 and (parts[3], parts[2]) in undefined


def _endpoints_name(name: str, cluster: cluster_pb2.Cluster) -> str | None:
    """The ClusterLoadAssignment an EDS cluster needs (None for other types)."""
    if cluster.type != cluster_pb2.Cluster.EDS:
        return None
    return str(cluster.eds_cluster_config.service_name or name)


def _listener_problems(
    name: str, listener: listener_pb2.Listener, routes: Mapping[str, Message]
) -> list[str]:
    packed: list[any_pb2.Any] = []
    if listener.HasField("api_listener"):
        packed.append(listener.api_listener.api_listener)
    for chain in listener.filter_chains:
        packed.extend(f.typed_config for f in chain.filters if f.name == HCM_FILTER)
    problems: list[str] = []
    for config in packed:
        manager = hcm_pb2.HttpConnectionManager()
        if not config.Unpack(manager):
            problems.append(
                f"Listener {name!r}: expected an HttpConnectionManager, found {config.type_url!r}"
            )
        elif manager.HasField("rds") and manager.rds.route_config_name not in routes:
            problems.append(
                f"Listener {name!r} uses RouteConfiguration "
                f"{manager.rds.route_config_name!r}, which is not in the set"
            )
    return problems


def _route_clusters(route_config: route_pb2.RouteConfiguration) -> Iterator[tuple[str, str, str]]:
    for vhost in route_config.virtual_hosts:
        for route in vhost.routes:
            if not route.HasField("route"):
                continue
            action = route.route
            if action.cluster:
                yield vhost.name, route.name, action.cluster
            for weighted in action.weighted_clusters.clusters:
                yield vhost.name, route.name, weighted.name
            for mirror in action.request_mirror_policies:
                yield vhost.name, route.name, mirror.cluster
