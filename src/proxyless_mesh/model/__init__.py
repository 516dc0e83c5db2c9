"""Plain, immutable views of the xDS resources the mesh acts on.

The xDS client turns protobufs into these objects once per update; everything
above it (routing, balancing, the integrations) reads only these, so no
protobuf is touched on the request path.
"""

from proxyless_mesh.model._resources import (
    Cluster,
    ClusterLoadAssignment,
    Endpoint,
    HeaderMatcher,
    HealthStatus,
    LbPolicy,
    Listener,
    Locality,
    LocalityEndpoints,
    MatchKind,
    PathMatcher,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    StringMatcher,
    VirtualHost,
    WeightedCluster,
)

__all__ = [
    "Cluster",
    "ClusterLoadAssignment",
    "Endpoint",
    "HeaderMatcher",
    "HealthStatus",
    "LbPolicy",
    "Listener",
    "Locality",
    "LocalityEndpoints",
    "MatchKind",
    "PathMatcher",
    "Route",
    "RouteAction",
    "RouteConfiguration",
    "RouteMatch",
    "StringMatcher",
    "VirtualHost",
    "WeightedCluster",
]
