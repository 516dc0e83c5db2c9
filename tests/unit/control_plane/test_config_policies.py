"""DestinationRule traffic policies and VirtualService resilience fields:
what an operator writes arrives in the model, and mistakes are named."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from mesh_control_plane.config import ConfigLoadError, MeshConfig, parse_documents
from mesh_control_plane.config.model import (
    ConnectionPool,
    ConsistentHash,
    Destination,
    FaultAbort,
    FaultDelay,
    HeaderOperations,
    HTTPRedirect,
    HTTPRetry,
    HTTPRewrite,
    LocalityRule,
    Mirror,
    OutlierDetection,
)

SERVICES = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  resolution: STATIC
  location: MESH_INTERNAL
  hosts: [reviews.mesh]
  ports: [{number: 8080, name: http}, {number: 9090, name: grpc}]
  endpoints: [{address: 10.0.0.1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow}
spec:
  resolution: STATIC
  location: MESH_INTERNAL
  hosts: [shadow.mesh]
  ports: [{number: 8080, name: http}]
"""

RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.mesh
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpHeaderName: X-User
        maglev: {tableSize: 65537}
      localityLbSetting:
        enabled: true
        failover: [{from: us-east, to: us-west}]
    outlierDetection:
      consecutive5xxErrors: 3
      consecutiveGatewayErrors: 2
      consecutiveLocalOriginFailures: 4
      splitExternalLocalOriginErrors: true
      interval: 5s
      baseEjectionTime: 1m
      maxEjectionPercent: 50
      minHealthPercent: 25
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 250ms}
      http:
        http1MaxPendingRequests: 1
        http2MaxRequests: 2
        maxRequestsPerConnection: 3
        maxRetries: 4
        idleTimeout: 30s
    portLevelSettings:
    - port: {number: 9090}
      loadBalancer: {simple: LEAST_REQUEST, warmupDurationSecs: 20s}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpCookie: {name: session, path: /, ttl: 1h}
          ringHash: {minimumRingSize: 2048}
        localityLbSetting:
          distribute:
          - from: us-east/*
            to: {"us-east/*": 80, "us-west/*": 20}
"""

ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews.mesh]
  http:
  - name: old
    match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: new.mesh, port: 8443, scheme: https, redirectCode: 308}
  - name: main
    route: [{destination: {host: reviews.mesh, subset: v1}}]
    timeout: 3s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,unavailable,503,429",
              retryRemoteLocalities: true}
    fault:
      delay: {fixedDelay: 100ms, percentage: {value: 0.5}}
      abort: {grpcStatus: UNAVAILABLE}
    mirror: {host: shadow.mesh}
    mirrorPercentage: {value: 12.5}
    rewrite: {uri: /v2, authority: internal.mesh}
    headers:
      request: {set: {X-A: "1"}, add: {x-b: "2"}, remove: [X-C]}
      response: {remove: [server]}
"""


def load(*texts: str) -> MeshConfig:
    docs = [("x.yaml", d) for text in texts for d in yaml.safe_load_all(textwrap.dedent(text))]
    return parse_documents(docs)


def problems(*texts: str) -> list[str]:
    with pytest.raises(ConfigLoadError) as caught:
        load(*texts)
    return [f"{p.field}: {p.message}" for p in caught.value.problems]


def test_destination_rule_policies_reach_the_model() -> None:
    (rule,) = load(SERVICES, RULE).destination_rules
    policy = rule.traffic_policy
    assert policy is not None and policy.load_balancer is not None
    assert policy.load_balancer.consistent_hash == ConsistentHash(
        key="header", name="x-user", maglev=True, table_size=65537
    )
    locality = policy.load_balancer.locality_lb_setting
    assert locality is not None and locality.enabled
    assert locality.failover == (LocalityRule("us-east", {"us-west": 0}),)
    assert locality.failover[0].to_region == "us-west"
    assert policy.outlier_detection == OutlierDetection(3, 2, 4, True, 5.0, 60.0, 50, 25)
    assert policy.connection_pool == ConnectionPool(10, 0.25, 1, 2, 3, 4, 30.0)
    (port,) = policy.port_level_settings
    assert port.port == 9090 and port.load_balancer is not None
    assert port.load_balancer.simple == "LEAST_REQUEST"
    assert port.load_balancer.warmup_duration == 20.0
    subset_policy = rule.subsets[0].traffic_policy
    assert subset_policy is not None and subset_policy.load_balancer is not None
    assert subset_policy.load_balancer.consistent_hash == ConsistentHash(
        key="cookie", name="session", cookie_path="/", cookie_ttl=3600.0, minimum_ring_size=2048
    )
    subset_locality = subset_policy.load_balancer.locality_lb_setting
    assert subset_locality is not None
    assert subset_locality.distribute == (
        LocalityRule("us-east/*", {"us-east/*": 80, "us-west/*": 20}),
    )


def test_virtual_service_resilience_fields_reach_the_model() -> None:
    (vs,) = load(SERVICES, RULE, ROUTES).virtual_services
    redirect, main = vs.http
    assert redirect.route == ()
    assert redirect.redirect == HTTPRedirect("/new", "new.mesh", 8443, "https", 308)
    assert main.retries == HTTPRetry(
        attempts=3,
        per_try_timeout=0.5,
        retry_on=("5xx", "unavailable", "retriable-status-codes"),
        retriable_status_codes=(503, 429),
        retry_remote_localities=True,
    )
    assert main.fault is not None
    assert main.fault.delay == FaultDelay(0.1, 0.5)
    assert main.fault.abort == FaultAbort(0.0, grpc_status=14)  # no percentage: none aborted
    assert main.mirrors == (Mirror(Destination("shadow.mesh"), 12.5),)
    assert main.rewrite == HTTPRewrite(uri="/v2", authority="internal.mesh")
    assert main.headers.request == HeaderOperations(
        set=(("x-a", "1"),), add=(("x-b", "2"),), remove=("x-c",)
    )
    assert main.headers.response == HeaderOperations(remove=("server",))


def test_mirrors_list_and_regex_rewrite() -> None:
    text = vs(
        """\
        - route: [{destination: {host: reviews.mesh}}]
          mirrors:
          - destination: {host: shadow.mesh}
            percentage: {value: 50}
          - destination: {host: reviews.mesh, subset: v1}
          rewrite: {uriRegexRewrite: {match: "^/a/(.*)$", rewrite: "/b/\\\\1"}}
        """
    )
    (virtual,) = load(SERVICES, RULE, text).virtual_services
    (route,) = virtual.http
    assert route.mirrors == (
        Mirror(Destination("shadow.mesh"), 50.0, in_list=True),
        Mirror(Destination("reviews.mesh", "v1"), 100.0, in_list=True),
    )
    assert route.rewrite == HTTPRewrite(uri_regex=("^/a/(.*)$", "/b/\\1"))


def dr(policy: str) -> str:
    head = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\n"
    return (
        head
        + "spec:\n  host: reviews.mesh\n  trafficPolicy:\n"
        + textwrap.indent(textwrap.dedent(policy), "    ")
    )


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            "loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}",
            ["spec.trafficPolicy.loadBalancer: set only one of simple and consistentHash"],
        ),
        (
            "loadBalancer: {consistentHash: {httpHeaderName: a, httpQueryParameterName: b}}",
            [
                "spec.trafficPolicy.loadBalancer.consistentHash: must set exactly one of "
                "httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName"
            ],
        ),
        (
            "loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}",
            [
                "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: must be a "
                "prime number below 5000011 (e.g. 65537), got 1000"
            ],
        ),
        (
            "loadBalancer: {consistentHash: {useSourceIp: true, ringHash: "
            "{minimumRingSize: 9000000}}}",
            [
                "spec.trafficPolicy.loadBalancer.consistentHash.ringHash.minimumRingSize: "
                "must be between 1 and 8388608, got 9000000"
            ],
        ),
        (
            "loadBalancer: {simple: RANDOM, warmupDurationSecs: 10s}",
            [
                "spec.trafficPolicy.loadBalancer.warmupDurationSecs: slow start works only "
                "with ROUND_ROBIN or LEAST_REQUEST (Envoy)"
            ],
        ),
        (
            "loadBalancer:\n  localityLbSetting:\n"
            "    distribute: [{from: a/*, to: {a/*: 60, b/*: 30}}]\n"
            "    failover: [{from: a, to: b/z}]\n",
            [
                "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: "
                "weights must sum to 100, got 90",
                "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].to: expected a "
                'region, got "b/z"',
                "spec.trafficPolicy.loadBalancer.localityLbSetting: set only one of distribute "
                "and failover/failoverPriority (as Istio)",
            ],
        ),
        (
            "outlierDetection: {consecutiveLocalOriginFailures: 2, maxEjectionPercent: 101}",
            [
                "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures: has no "
                "effect unless splitExternalLocalOriginErrors is true (Envoy)",
                "spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be between 0 "
                "and 100, got 101",
            ],
        ),
        (
            "connectionPool: {http: {http2MaxRequests: 0}, tcp: {connectTimeout: soon}}",
            [
                "spec.trafficPolicy.connectionPool.tcp.connectTimeout: invalid duration "
                '"soon" (expected e.g. "1.5s", "300ms", "2m")',
                "spec.trafficPolicy.connectionPool.http.http2MaxRequests: must be between 1 "
                "and 4294967295, got 0",
            ],
        ),
        (
            "portLevelSettings: [{port: {number: 1}}, {port: {number: 1}, tls: {mode: MUTUAL}}]",
            [
                "spec.trafficPolicy.portLevelSettings[1].port.number: port 1 is set twice",
                "spec.trafficPolicy.portLevelSettings[1].tls.clientCertificate: missing required "
                "field (MUTUAL presents a client certificate)",
                "spec.trafficPolicy.portLevelSettings[1].tls.privateKey: missing required "
                "field (MUTUAL presents a client certificate)",
            ],
        ),
    ],
)
def test_destination_rule_mistakes_are_named(policy: str, expected: list[str]) -> None:
    assert problems(SERVICES, dr(policy)) == expected


def vs(http: str) -> str:
    head = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\n"
    return (
        head
        + "spec:\n  hosts: [reviews.mesh]\n  http:\n"
        + textwrap.indent(textwrap.dedent(http), "  ")
    )


ROUTE = "  route: [{destination: {host: reviews.mesh}}]\n"


@pytest.mark.parametrize(
    ("http", "expected"),
    [
        (
            "- retries: {attempts: 2, retryOn: '5xx,bogus,700', perTryTimeout: 0s}\n" + ROUTE,
            [
                "spec.http[0].retries.perTryTimeout: must be at least 1ms",
                'spec.http[0].retries.retryOn: unknown retry condition "bogus" (Envoy: 5xx, '
                "gateway-error, reset, reset-before-request, connect-failure, envoy-ratelimited, "
                "retriable-4xx, refused-stream, retriable-status-codes, retriable-headers, "
                "http3-post-connect-failure; gRPC: cancelled, deadline-exceeded, internal, "
                "resource-exhausted, unavailable; or an HTTP status code)",
                "spec.http[0].retries.retryOn: status code 700 is not between 100 and 599",
            ],
        ),
        (
            "- fault: {abort: {grpcStatus: NOPE, httpStatus: 503}, delay: {percentage: "
            "{value: 101}}}\n" + ROUTE,
            [
                "spec.http[0].fault.delay.fixedDelay: missing required field",
                "spec.http[0].fault.delay.percentage.value: must be between 0 and 100, got 101",
                "spec.http[0].fault.abort: must set exactly one of httpStatus, grpcStatus",
            ],
        ),
        (
            "- redirect: {redirectCode: 305, scheme: ftp}\n" + ROUTE + "  rewrite: {}\n",
            [
                'spec.http[0].redirect.scheme: expected "http" or "https", got "ftp"',
                "spec.http[0].redirect.redirectCode: must be one of (301, 302, 303, 307, 308), "
                "got 305",
                "spec.http[0].route: cannot be used together with redirect",
                "spec.http[0].rewrite: cannot be used together with redirect",
                "spec.http[0].rewrite: must set uri, uriRegexRewrite or authority",
            ],
        ),
        (
            "- headers: {request: {set: {':path': /x, Host: a, 'bad name': b}}}\n" + ROUTE,
            [
                'spec.http[0].headers.request.set.:path: header ":path" cannot be changed here '
                "(use rewrite.authority for the host)",
                'spec.http[0].headers.request.set.Host: header "Host" cannot be changed here '
                "(use rewrite.authority for the host)",
                "spec.http[0].headers.request.set.bad name: invalid header name 'bad name'",
            ],
        ),
        (
            "- rewrite: {uri: /a, uriRegexRewrite: {match: '(?=x)', rewrite: y}}\n" + ROUTE,
            [
                "spec.http[0].rewrite.uriRegexRewrite.match: invalid regex '(?=x)': RE2 "
                "(Envoy, gRPC) has no lookaround assertions",
                "spec.http[0].rewrite.uriRegexRewrite: cannot be used together with uri",
            ],
        ),
        (
            "- mirror: {host: nowhere.mesh}\n" + ROUTE,
            ['spec.http[0].mirror.host: no ServiceEntry declares host "nowhere.mesh"'],
        ),
    ],
)
def test_virtual_service_mistakes_are_named(http: str, expected: list[str]) -> None:
    assert problems(SERVICES, vs(http)) == expected


def test_attempts_zero_disables_retries_as_in_istio() -> None:
    (virtual,) = load(SERVICES, vs("- retries: {retryOn: 5xx}\n" + ROUTE)).virtual_services
    assert virtual.http[0].retries == HTTPRetry(attempts=0, retry_on=("5xx",))


def test_unspecified_load_balancer_is_istios_default() -> None:
    # Istio's SimpleLB enum has UNSPECIFIED ("Istio will select an appropriate default").
    config = load(SERVICES, dr("loadBalancer: {simple: UNSPECIFIED}"))
    (rule,) = config.destination_rules
    assert rule.traffic_policy is not None
    lb = rule.traffic_policy.load_balancer
    assert lb is not None and lb.simple is None
