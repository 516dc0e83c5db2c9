"""Load balancing and resilience fields: from the control plane's own output
(the `policies` sample, as our library is sent it) into the model, and the
values the decoder NACKs like gRPC would."""

from __future__ import annotations

import re
from typing import Any

import pytest
from control_plane.samples import policies
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.type.v3 import percent_pb2
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import CLUSTER, ENDPOINT, ROUTE, ClientKind, NodeInfo, translate

from proxyless_mesh.errors import XdsResourceError
from proxyless_mesh.model import (
    CircuitBreakers,
    FaultAbort,
    FaultConfig,
    FaultDelay,
    HashPolicy,
    HashPolicyKind,
    HeaderMutation,
    LbPolicy,
    MaglevConfig,
    MirrorPolicy,
    OutlierDetection,
    RedirectAction,
    RegexRewrite,
    RetryBudget,
    RetryPolicy,
    RingHashConfig,
    Route,
    SlowStartConfig,
)
from proxyless_mesh.xds_client._decode import (
    decode_cluster,
    decode_cluster_load_assignment,
    decode_route_configuration,
)

SHOP = "outbound|8080||shop.mesh"


@pytest.fixture(scope="module")
def sent() -> Any:
    config = policies()
    node = NodeInfo(id="lib", kind=ClientKind.MESH, locality=("us-east", "a", ""))
    return translate(config, build_static_registry(config), node).resources


def test_cluster_policies_arrive_in_the_model(sent: Any) -> None:
    shop = decode_cluster(sent[CLUSTER][SHOP])
    assert shop.lb_policy is LbPolicy.RING_HASH
    assert shop.ring_hash == RingHashConfig(minimum_ring_size=2048)
    assert shop.outlier_detection == OutlierDetection(
        consecutive_5xx=3,
        consecutive_gateway_failure=2,
        consecutive_local_origin_failure=4,
        split_external_local_origin_errors=True,
        interval=5.0,
        base_ejection_time=60.0,
        max_ejection_percent=50,
    )
    assert shop.panic_threshold == 25.0
    assert shop.circuit_breakers == CircuitBreakers(
        max_connections=10,
        max_pending_requests=1,
        max_requests=2,
        max_retries=2**32 - 1,
        retry_budget=RetryBudget(20.0, 3),
    )
    assert (shop.connect_timeout, shop.idle_timeout, shop.max_requests_per_connection) == (
        0.25,
        30.0,
        3,
    )
    v2 = decode_cluster(sent[CLUSTER]["outbound|8080|v2|shop.mesh"])
    assert v2.lb_policy is LbPolicy.MAGLEV and v2.maglev == MaglevConfig(65537)
    assert v2.circuit_breakers.retry_budget is None  # explicit maxRetries replaces it
    assert v2.circuit_breakers.max_retries == 7
    grpc_port = decode_cluster(sent[CLUSTER]["outbound|9090||shop.mesh"])
    assert grpc_port.lb_policy is LbPolicy.LEAST_REQUEST
    assert grpc_port.slow_start == SlowStartConfig(window=20.0)
    stock = decode_cluster(sent[CLUSTER]["outbound|9090||stock.mesh"])
    assert stock.slow_start == SlowStartConfig(window=30.0)
    assert stock.outlier_detection is None and stock.panic_threshold == 50.0


def test_locality_failover_priorities_for_this_client(sent: Any) -> None:
    cla = decode_cluster_load_assignment(sent[ENDPOINT]["outbound|8080|v1|shop.mesh"])
    by_region = {loc.locality.region: loc.priority for loc in cla.localities}
    # us-east is ours (0); the failover rule names no region for us-west... it is
    # "another region" (3 -> compacted 1) since failover applies from us-east to eu-west.
    assert by_region == {"us-east": 0, "us-west": 1}
    v2 = decode_cluster_load_assignment(sent[ENDPOINT]["outbound|8080|v2|shop.mesh"])
    assert {loc.locality.region: loc.weight for loc in v2.localities} == {
        "us-east": 70,
        "eu-west": 30,
    }
    assert v2.overprovisioning_factor == 140


def routes(sent: Any) -> dict[str, list[Route]]:
    config = decode_route_configuration(sent[ROUTE]["shop.mesh:8080"])
    (vhost,) = config.virtual_hosts
    found: dict[str, list[Route]] = {}
    for route in vhost.routes:
        found.setdefault(route.name.rsplit("/", 1)[-1], []).append(route)
    return found


def test_route_policies_arrive_in_the_model(sent: Any) -> None:
    found = routes(sent)
    (moved,) = found["moved"]
    assert moved.action is None
    assert moved.redirect == RedirectAction(308, "https", "new.mesh", 8443, "/new")
    assert moved.response_headers == HeaderMutation(set=(("x-moved", "yes"),))
    (api,) = found["api"]
    assert api.action is not None
    assert api.action.timeout == 3.0
    assert api.action.retry_policy == RetryPolicy(
        retry_on=frozenset({"5xx", "unavailable", "retriable-status-codes"}),
        num_retries=3,
        per_try_timeout=0.5,
        retriable_status_codes=(503, 429),
        retry_other_hosts=False,  # the route hashes: Istio keeps the key's host
        retry_other_priorities=True,
    )
    assert api.action.hash_policies == (HashPolicy(HashPolicyKind.HEADER, "x-user"),)
    assert api.action.mirrors == (MirrorPolicy("outbound|8080||shadow.mesh", 0.125),)
    assert api.action.prefix_rewrite == "/v2/api"
    assert api.action.host_rewrite == "internal.shop.mesh"
    assert api.fault == FaultConfig(FaultDelay(0.1, 0.5), FaultAbort(0.0, grpc_status=14))
    assert api.request_headers == HeaderMutation(
        set=(("x-a", "1"),), add=(("x-b", "2"),), remove=("x-c",)
    )
    assert api.response_headers == HeaderMutation(remove=("server",))
    (rest,) = found["rest"]
    assert rest.action is not None and rest.action.retry_policy is None  # attempts: 0
    assert rest.action.regex_rewrite == RegexRewrite("^/a/(.*)$", "/b/\\1")
    assert rest.fault == FaultConfig(abort=FaultAbort(100.0, http_status=503))


def test_default_route_gets_istios_default_retry_policy(sent: Any) -> None:
    config = decode_route_configuration(sent[ROUTE]["shadow.mesh:8080"])
    (route,) = config.virtual_hosts[0].routes
    assert route.action is not None
    assert route.action.retry_policy == RetryPolicy(
        retry_on=frozenset(
            {"connect-failure", "refused-stream", "unavailable", "cancelled"}
            | {"retriable-status-codes"}
        ),
        num_retries=2,
        retriable_status_codes=(503,),
        retry_other_hosts=True,
    )


def eds_cluster(**fields: Any) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.EDS, **fields)
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    return cluster


@pytest.mark.parametrize(
    ("cluster", "reason"),
    [
        (
            eds_cluster(
                lb_policy=cluster_pb2.Cluster.RING_HASH,
                ring_hash_lb_config={"minimum_ring_size": {"value": 10_000_000}},
            ),
            "ring sizes must be <= 8388608",
        ),
        (
            eds_cluster(
                lb_policy=cluster_pb2.Cluster.RING_HASH,
                ring_hash_lb_config={
                    "minimum_ring_size": {"value": 4096},
                    "maximum_ring_size": {"value": 1024},
                },
            ),
            "min_ring_size 4096 must be in 1..max_ring_size (1024)",
        ),
        (
            eds_cluster(
                lb_policy=cluster_pb2.Cluster.MAGLEV, maglev_lb_config={"table_size": {"value": 10}}
            ),
            "table_size 10 must be a prime",
        ),
        (
            eds_cluster(outlier_detection={"max_ejection_percent": {"value": 101}}),
            "max_ejection_percent must be <= 100",
        ),
        (
            eds_cluster(common_lb_config={"healthy_panic_threshold": {"value": 150}}),
            "percentage 150.0 is not within 0..100",
        ),
    ],
)
def test_cluster_values_grpc_refuses_are_nacked(cluster: Any, reason: str) -> None:
    with pytest.raises(XdsResourceError, match=re.escape(reason)):
        decode_cluster(cluster)


def route_config(route: rc_pb2.Route) -> route_pb2.RouteConfiguration:
    route.match.prefix = "/"
    return route_pb2.RouteConfiguration(
        name="r", virtual_hosts=[rc_pb2.VirtualHost(name="v", domains=["*"], routes=[route])]
    )


def test_invalid_regex_rewrite_is_nacked() -> None:
    route = rc_pb2.Route(route=rc_pb2.RouteAction(cluster="c"))
    route.route.regex_rewrite.pattern.regex = "(unclosed"
    route.route.regex_rewrite.substitution = "x"
    with pytest.raises(XdsResourceError, match=r"regex_rewrite\.pattern: invalid regex"):
        decode_route_configuration(route_config(route))


def test_fault_percentages_of_any_denominator_become_percent() -> None:
    fault = fault_pb2.HTTPFault()
    fault.abort.http_status = 429
    fault.abort.percentage.numerator = 25
    fault.abort.percentage.denominator = percent_pb2.FractionalPercent.TEN_THOUSAND
    fault.delay.fixed_delay.FromMilliseconds(1500)  # no percentage: every request (Envoy)
    route = rc_pb2.Route(route=rc_pb2.RouteAction(cluster="c"))
    route.typed_per_filter_config["any-name"].Pack(fault)
    (decoded,) = decode_route_configuration(route_config(route)).virtual_hosts[0].routes
    assert decoded.fault == FaultConfig(FaultDelay(1.5, 100.0), FaultAbort(0.25, http_status=429))


def test_retry_back_off_rules_of_grpc() -> None:
    route = rc_pb2.Route(route=rc_pb2.RouteAction(cluster="c"))
    route.route.retry_policy.retry_on = "unavailable"
    route.route.retry_policy.retry_back_off.base_interval.FromMilliseconds(0)
    with pytest.raises(XdsResourceError, match="base_interval must be greater than 0"):
        decode_route_configuration(route_config(route))
    route.route.retry_policy.retry_back_off.base_interval.FromMilliseconds(100)
    (decoded,) = decode_route_configuration(route_config(route)).virtual_hosts[0].routes
    assert decoded.action is not None and decoded.action.retry_policy is not None
    policy = decoded.action.retry_policy
    assert (policy.num_retries, policy.base_interval, policy.max_interval) == (1, 0.1, 1.0)
    assert not policy.retry_other_hosts


def test_overprovisioning_factor_from_policy() -> None:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="c")
    cla.policy.overprovisioning_factor.value = 200
    assert decode_cluster_load_assignment(cla).overprovisioning_factor == 200
    cla.policy.overprovisioning_factor.value = 0
    with pytest.raises(XdsResourceError, match="overprovisioning_factor"):
        decode_cluster_load_assignment(cla)
