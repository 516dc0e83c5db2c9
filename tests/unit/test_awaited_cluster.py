"""A route naming a cluster that has not arrived yet (a Delta client subscribes
to a cluster by name once a route names it) waits as a new authority does; a
cluster the control plane said does not exist fails fast with NC."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from proxyless_mesh.errors import NoClusterError
from proxyless_mesh.model import (
    Listener,
    MatchKind,
    PathMatcher,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
    WeightedCluster,
)
from proxyless_mesh.runtime import UNRESOLVED, route_request
from proxyless_mesh.snapshot import build_snapshot
from proxyless_mesh.xds_client import XdsState

NAME = "reviews.default.svc.cluster.local:9080"
CLUSTER = "outbound|9080|v2|reviews.default.svc.cluster.local"


def _state(**extra: object) -> XdsState:
    route = Route(
        "r",
        RouteMatch(PathMatcher(MatchKind.PREFIX, "/")),
        RouteAction((WeightedCluster(CLUSTER, 100),)),
    )
    routes = RouteConfiguration("rc", (VirtualHost("vh", ("*",), (route,)),))
    listeners = MappingProxyType({NAME: Listener(NAME, inline_routes=routes)})
    return XdsState(listeners=listeners, **extra)  # type: ignore[arg-type]


def _route(state: XdsState) -> object:
    snapshot = build_snapshot(state)
    return route_request(snapshot, NAME, "/", "GET", lambda _: None, outbound_policy="ALLOW_ANY")


def test_a_cluster_on_its_way_makes_the_request_wait() -> None:
    assert _route(_state()) is UNRESOLVED


def test_a_cluster_known_absent_fails_with_nc() -> None:
    with pytest.raises(NoClusterError, match="does not have"):
        _route(_state(absent_clusters=frozenset({CLUSTER})))
