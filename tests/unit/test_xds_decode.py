"""Decoding xDS protobufs into model objects, and each reason a resource is NACKed."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from proxyless_mesh.errors import XdsResourceError
from proxyless_mesh.model import (
    Cluster,
    HeaderMatcher,
    LbPolicy,
    Listener,
    MatchKind,
    PathMatcher,
    RedirectAction,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    StringMatcher,
    VirtualHost,
    WeightedCluster,
)
from proxyless_mesh.xds_client import (
    decode_cluster,
    decode_listener,
    decode_route_configuration,
)

ADS = config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource())


def packed(msg: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(msg)
    return out


def router() -> Any:
    return hcm_pb2.HttpFilter(
        name="envoy.filters.http.router", typed_config=packed(router_pb2.Router())
    )


def listener(hcm: Any, name: str = "p.mesh:80") -> Any:
    return listener_pb2.Listener(
        name=name, api_listener=api_listener_pb2.ApiListener(api_listener=packed(hcm))
    )


def rds_hcm(route_name: str = "r1", filters: list[Any] | None = None) -> Any:
    return hcm_pb2.HttpConnectionManager(
        rds=hcm_pb2.Rds(config_source=ADS, route_config_name=route_name),
        http_filters=[router()] if filters is None else filters,
    )


def route_config(*routes: Any, domains: tuple[str, ...] = ("p.mesh:80",)) -> Any:
    return route_pb2.RouteConfiguration(
        name="r1",
        virtual_hosts=[rc.VirtualHost(name="vh", domains=list(domains), routes=list(routes))],
    )


def a_route(match: Any = None, action: Any = None, **kw: Any) -> Any:
    return rc.Route(
        name="rt",
        match=match or rc.RouteMatch(prefix="/"),
        route=action or rc.RouteAction(cluster="c1"),
        **kw,
    )


def regex(pattern: str) -> Any:
    return regex_pb2.RegexMatcher(regex=pattern)


def only_route(config: RouteConfiguration) -> Route:
    (vh,) = config.virtual_hosts
    (route,) = vh.routes
    return route


def rejects(decoder: Any, msg: Any, reason: str) -> None:
    with pytest.raises(XdsResourceError) as info:
        decoder(msg)
    assert reason in str(info.value)


# -- Listener ---------------------------------------------------------------------


def test_listener_with_rds_from_any_and_resource_wrapper() -> None:
    msg = listener(rds_hcm())
    expected = Listener(name="p.mesh:80", rds_name="r1")
    assert decode_listener(msg) == expected
    assert decode_listener(packed(msg)) == expected
    wrapped = packed(discovery_pb2.Resource(name="p.mesh:80", resource=packed(msg)))
    assert decode_listener(wrapped) == expected


def test_listener_with_inline_routes_and_self_config_source() -> None:
    hcm = hcm_pb2.HttpConnectionManager(
        route_config=route_config(a_route()), http_filters=[router()]
    )
    got = decode_listener(listener(hcm))
    assert isinstance(got, Listener)
    assert got.rds_name is None
    assert got.inline_routes is not None
    assert only_route(got.inline_routes).action == RouteAction((WeightedCluster("c1", 1),))
    self_source = config_source_pb2.ConfigSource(self=config_source_pb2.SelfConfigSource())
    hcm = hcm_pb2.HttpConnectionManager(
        rds=hcm_pb2.Rds(config_source=self_source, route_config_name="r9"),
        http_filters=[router()],
    )
    assert decode_listener(listener(hcm)) == Listener(name="p.mesh:80", rds_name="r9")


def test_other_filters_before_router_are_accepted() -> None:
    fault = hcm_pb2.HttpFilter(name="fault", typed_config=packed(fault_pb2.HTTPFault()))
    got = decode_listener(listener(rds_hcm(filters=[fault, router()])))
    assert got == Listener(name="p.mesh:80", rds_name="r1")


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (listener_pb2.Listener(name="x"), "server Listener needs address.socket_address"),
        (listener(rds_hcm(), name=""), "Listener has no name"),
        (
            listener_pb2.Listener(
                name="x",
                api_listener=api_listener_pb2.ApiListener(api_listener=packed(router_pb2.Router())),
            ),
            "expected an HttpConnectionManager",
        ),
        (
            listener(hcm_pb2.HttpConnectionManager(http_filters=[router()])),
            "HttpConnectionManager has neither rds nor route_config",
        ),
        (
            listener(
                hcm_pb2.HttpConnectionManager(
                    rds=hcm_pb2.Rds(
                        config_source=config_source_pb2.ConfigSource(path="/etc/r.yaml"),
                        route_config_name="r1",
                    ),
                    http_filters=[router()],
                )
            ),
            "HttpConnectionManager.rds.config_source: ConfigSource is not ads or self",
        ),
        (listener(rds_hcm(route_name="")), "route_config_name is empty"),
        (listener(rds_hcm(filters=[])), "http_filters is empty"),
        (
            listener(
                rds_hcm(
                    filters=[
                        router(),
                        hcm_pb2.HttpFilter(
                            name="fault", typed_config=packed(fault_pb2.HTTPFault())
                        ),
                    ]
                )
            ),
            "router filter 'envoy.filters.http.router' is not the last http filter",
        ),
        (
            listener(
                rds_hcm(
                    filters=[
                        hcm_pb2.HttpFilter(name="fault", typed_config=packed(fault_pb2.HTTPFault()))
                    ]
                )
            ),
            "the last http filter must be the router, got 'fault'",
        ),
        (
            listener(
                hcm_pb2.HttpConnectionManager(
                    route_config=route_config(a_route(match=rc.RouteMatch())),
                    http_filters=[router()],
                )
            ),
            "inline route_config: virtual_hosts[0].routes[0].match: path specifier missing",
        ),
    ],
)
def test_listener_rejections(msg: Any, reason: str) -> None:
    rejects(decode_listener, msg, reason)


def test_wrong_resource_type_is_rejected() -> None:
    rejects(decode_listener, packed(cluster_pb2.Cluster(name="c")), "expected 'type.googleapis")
    bad = any_pb2.Any(type_url=packed(listener(rds_hcm())).type_url, value=b"\xff\xff\xff")
    rejects(decode_listener, bad, "cannot parse Listener")


# -- RouteConfiguration --------------------------------------------------------------


def test_route_configuration_full() -> None:
    header_route = a_route(
        match=rc.RouteMatch(
            path="/api/v1",
            case_sensitive=wrappers_pb2.BoolValue(value=False),
            headers=[
                rc.HeaderMatcher(name="X-User", exact_match="jason"),
                rc.HeaderMatcher(name="x-pre", prefix_match="ab", invert_match=True),
                rc.HeaderMatcher(name="x-re", safe_regex_match=regex("v[0-9]+")),
                rc.HeaderMatcher(name="x-here", present_match=True),
                rc.HeaderMatcher(name="x-gone", present_match=False),
                rc.HeaderMatcher(name="x-any"),
                rc.HeaderMatcher(
                    name="x-sm", string_match=string_pb2.StringMatcher(suffix="Z", ignore_case=True)
                ),
                rc.HeaderMatcher(name="x-con", contains_match="mid"),
                rc.HeaderMatcher(
                    name="x-smre", string_match=string_pb2.StringMatcher(safe_regex=regex("a.c"))
                ),
            ],
        ),
        action=rc.RouteAction(
            weighted_clusters=rc.WeightedCluster(
                clusters=[
                    rc.WeightedCluster.ClusterWeight(
                        name="v1", weight=wrappers_pb2.UInt32Value(value=80)
                    ),
                    rc.WeightedCluster.ClusterWeight(
                        name="v2", weight=wrappers_pb2.UInt32Value(value=20)
                    ),
                    rc.WeightedCluster.ClusterWeight(
                        name="v3", weight=wrappers_pb2.UInt32Value(value=0)
                    ),
                ]
            ),
            timeout=duration_pb2.Duration(seconds=2, nanos=500_000_000),
        ),
    )
    regex_route = a_route(
        match=rc.RouteMatch(safe_regex=regex("/items/[0-9]+")),
        action=rc.RouteAction(
            cluster="c1",
            max_stream_duration=rc.RouteAction.MaxStreamDuration(
                max_stream_duration=duration_pb2.Duration(seconds=3)
            ),
        ),
    )
    redirect = rc.Route(
        name="redir",
        match=rc.RouteMatch(prefix="/old"),
        redirect=rc.RedirectAction(path_redirect="/new"),
    )
    query = a_route(
        match=rc.RouteMatch(prefix="/q", query_parameters=[rc.QueryParameterMatcher(name="debug")])
    )
    got = decode_route_configuration(
        packed(route_config(header_route, regex_route, redirect, query, domains=("a", "*.b")))
    )

    def hm(name: str, kind: MatchKind, value: str = "", **kw: Any) -> HeaderMatcher:
        ignore_case = kw.pop("ignore_case", False)
        return HeaderMatcher(name, StringMatcher(kind, value, ignore_case), **kw)

    assert got == RouteConfiguration(
        name="r1",
        virtual_hosts=(
            VirtualHost(
                name="vh",
                domains=("a", "*.b"),
                routes=(
                    Route(
                        name="rt",
                        match=RouteMatch(
                            path=PathMatcher(MatchKind.EXACT, "/api/v1", case_sensitive=False),
                            headers=(
                                hm("x-user", MatchKind.EXACT, "jason"),
                                hm("x-pre", MatchKind.PREFIX, "ab", invert=True),
                                hm("x-re", MatchKind.REGEX, "v[0-9]+"),
                                hm("x-here", MatchKind.PRESENT),
                                hm("x-gone", MatchKind.PRESENT, invert=True),
                                hm("x-any", MatchKind.PRESENT),
                                hm("x-sm", MatchKind.SUFFIX, "Z", ignore_case=True),
                                hm("x-con", MatchKind.CONTAINS, "mid"),
                                hm("x-smre", MatchKind.REGEX, "a.c"),
                            ),
                        ),
                        action=RouteAction(
                            clusters=(WeightedCluster("v1", 80), WeightedCluster("v2", 20)),
                            timeout=2.5,
                        ),
                    ),
                    Route(
                        name="rt",
                        match=RouteMatch(path=PathMatcher(MatchKind.REGEX, "/items/[0-9]+")),
                        action=RouteAction(clusters=(WeightedCluster("c1", 1),), timeout=3.0),
                    ),
                    # Answered by the mesh with a redirect: no forwarding action.
                    Route(
                        name="redir",
                        match=RouteMatch(path=PathMatcher(MatchKind.PREFIX, "/old")),
                        action=None,
                        redirect=RedirectAction(response_code=301, path="/new"),
                    ),
                    # The query-parameter route is skipped (gRPC does the same).
                ),
            ),
        ),
    )


def test_route_timeout_wins_over_max_stream_duration_and_zero_means_none() -> None:
    action = rc.RouteAction(
        cluster="c1",
        timeout=duration_pb2.Duration(seconds=1),
        max_stream_duration=rc.RouteAction.MaxStreamDuration(
            max_stream_duration=duration_pb2.Duration(seconds=9)
        ),
    )
    got = only_route(decode_route_configuration(route_config(a_route(action=action))))
    assert got.action is not None and got.action.timeout == 1.0
    action = rc.RouteAction(cluster="c1", timeout=duration_pb2.Duration(seconds=0))
    got = only_route(decode_route_configuration(route_config(a_route(action=action))))
    assert got.action is not None and got.action.timeout is None


def _wc(*weights: int | None) -> Any:
    clusters = []
    for i, w in enumerate(weights):
        cw = rc.WeightedCluster.ClusterWeight(name=f"c{i}")
        if w is not None:
            cw.weight.value = w
        clusters.append(cw)
    return rc.RouteAction(weighted_clusters=rc.WeightedCluster(clusters=clusters))


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        (a_route(match=rc.RouteMatch()), "routes[0].match: path specifier missing"),
        (
            a_route(match=rc.RouteMatch(path_separated_prefix="/a")),
            "path specifier path_separated_prefix is not supported",
        ),
        (
            a_route(match=rc.RouteMatch(safe_regex=regex("(unclosed"))),
            "match.safe_regex: invalid regex '(unclosed'",
        ),
        (
            a_route(
                match=rc.RouteMatch(
                    prefix="/", headers=[rc.HeaderMatcher(name="x", safe_regex_match=regex("["))]
                )
            ),
            "headers[0].safe_regex_match: invalid regex",
        ),
        (
            a_route(match=rc.RouteMatch(prefix="/", headers=[rc.HeaderMatcher(exact_match="v")])),
            "headers[0]: header name is empty",
        ),
        (
            a_route(
                match=rc.RouteMatch(
                    prefix="/",
                    headers=[rc.HeaderMatcher(name="x", range_match={"start": 1, "end": 5})],
                )
            ),
            "header matcher range_match is not supported",
        ),
        (a_route(action=_wc(0, 0)), "no valid clusters specified"),
        (a_route(action=_wc()), "no valid clusters specified"),
        (a_route(action=_wc(None, 0)), "no valid clusters specified"),
        (a_route(action=_wc(2**32 - 1, 1)), "sum of weights exceeds uint32 max"),
        (a_route(action=rc.RouteAction()), "route: no cluster specifier"),
        (a_route(action=rc.RouteAction(cluster_header="x-c")), "cluster_header is not supported"),
        (
            a_route(action=rc.RouteAction(timeout=duration_pb2.Duration(seconds=-1), cluster="c")),
            "timeout: negative duration",
        ),
        (rc.Route(match=rc.RouteMatch(prefix="/")), "route has no action"),
        (
            a_route(match=rc.RouteMatch(prefix="/", runtime_fraction={"runtime_key": "k"})),
            "runtime_fraction is not supported",
        ),
    ],
)
def test_route_rejections(route: Any, reason: str) -> None:
    rejects(decode_route_configuration, route_config(route), reason)


def test_virtual_host_without_domains_is_rejected() -> None:
    rejects(decode_route_configuration, route_config(a_route(), domains=()), "no domains")


# -- Cluster --------------------------------------------------------------------------


def eds_cluster(name: str = "c1", service_name: str = "", **kw: Any) -> Any:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=ADS, service_name=service_name
        ),
        **kw,
    )


def test_cluster() -> None:
    assert decode_cluster(packed(eds_cluster())) == Cluster("c1", "c1", LbPolicy.ROUND_ROBIN)
    assert decode_cluster(
        eds_cluster(service_name="svc", lb_policy=cluster_pb2.Cluster.LEAST_REQUEST)
    ) == Cluster("c1", "svc", LbPolicy.LEAST_REQUEST)
    # MAGLEV and RING_HASH go into the model; the balancer decides what to do.
    for proto, model in (
        (cluster_pb2.Cluster.MAGLEV, LbPolicy.MAGLEV),
        (cluster_pb2.Cluster.RING_HASH, LbPolicy.RING_HASH),
    ):
        assert decode_cluster(eds_cluster(lb_policy=proto)).lb_policy is model


def test_cluster_typed_lb_policy_takes_first_known() -> None:
    msg = eds_cluster()
    unknown = msg.load_balancing_policy.policies.add()
    unknown.typed_extension_config.typed_config.type_url = "type.googleapis.com/x.Custom"
    ring = msg.load_balancing_policy.policies.add()
    ring.typed_extension_config.typed_config.Pack(ring_hash_pb2.RingHash())
    assert decode_cluster(msg).lb_policy is LbPolicy.RING_HASH


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (eds_cluster(name=""), "Cluster has no name"),
        (
            cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.STATIC),
            "discovery type STATIC is not supported (only EDS)",
        ),
        (
            cluster_pb2.Cluster(
                name="c",
                cluster_type=cluster_pb2.Cluster.CustomClusterType(name="envoy.clusters.aggregate"),
            ),
            "cluster_type 'envoy.clusters.aggregate' (custom cluster types) is not supported",
        ),
        (
            cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.EDS),
            "eds_cluster_config.eds_config: ConfigSource is not ads or self",
        ),
        (
            cluster_pb2.Cluster(
                name="c",
                type=cluster_pb2.Cluster.EDS,
                eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
                    eds_config=config_source_pb2.ConfigSource(path="/x")
                ),
            ),
            "ConfigSource is not ads or self",
        ),
        (
            eds_cluster(lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED),
            "lb_policy CLUSTER_PROVIDED is not supported",
        ),
    ],
)
def test_cluster_rejections(msg: Any, reason: str) -> None:
    rejects(decode_cluster, msg, reason)
