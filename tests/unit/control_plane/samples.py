"""Sample MeshConfigs for translator and registry tests, built directly (no YAML).

Each sample exercises one idea; the golden files show what it becomes on the wire.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from mesh_control_plane.config.model import (
    AuthorizationPolicy,
    ClientTls,
    ConnectionPool,
    ConsistentHash,
    Destination,
    DestinationRule,
    FaultAbort,
    FaultDelay,
    HeaderOperations,
    Headers,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRetry,
    HTTPRewrite,
    HTTPRoute,
    HTTPRouteDestination,
    LoadBalancerSettings,
    LocalityLbSetting,
    LocalityRule,
    MeshConfig,
    Meta,
    Mirror,
    OutlierDetection,
    PeerAuthentication,
    PortTrafficPolicy,
    RequestAuthentication,
    ServiceEntry,
    ServicePort,
    StringMatch,
    Subset,
    TrafficPolicy,
    VirtualService,
    WorkloadEndpoint,
    WorkloadEntry,
)


def meta(kind: str, name: str, namespace: str = "default") -> Meta:
    return Meta(kind=kind, name=name, namespace=namespace, file=f"{namespace}/{name}.yaml")


def service(
    host: str,
    ports: tuple[ServicePort, ...],
    endpoints: tuple[WorkloadEndpoint, ...] = (),
    namespace: str = "default",
    selector: Mapping[str, str] | None = None,
) -> ServiceEntry:
    return ServiceEntry(
        meta=meta("ServiceEntry", host.split(".")[0], namespace),
        hosts=(host,),
        ports=ports,
        endpoints=endpoints,
        workload_selector=selector,
    )


def http(number: int, name: str = "http", target_port: int | None = None) -> ServicePort:
    return ServicePort(number=number, protocol="HTTP", name=name, target_port=target_port)


def policy(simple: str) -> TrafficPolicy:
    return TrafficPolicy(load_balancer=LoadBalancerSettings(simple=simple))


def to(
    host: str, subset: str | None = None, weight: int = 0, port: int | None = None
) -> HTTPRouteDestination:
    return HTTPRouteDestination(Destination(host=host, subset=subset, port=port), weight=weight)


def simple() -> MeshConfig:
    """A service on port 80 (target 8080) and a TCP port, two instances, no routing."""
    return MeshConfig(
        service_entries=(
            service(
                "ratings.default.mesh",
                (http(80, target_port=8080), ServicePort(9000, "TCP", "tcp")),
                (
                    WorkloadEndpoint(address="10.0.0.2"),
                    WorkloadEndpoint(address="10.0.0.1", ports={"http": 9080}),
                ),
            ),
        )
    )


REVIEWS = "reviews.default.mesh"


def canary() -> MeshConfig:
    """80/20 between subsets v1 and v2; v2 overrides the RANDOM policy."""
    return MeshConfig(
        service_entries=(
            service(
                REVIEWS,
                (http(8080),),
                (
                    WorkloadEndpoint(address="10.0.1.1", labels={"version": "v1"}),
                    WorkloadEndpoint(address="10.0.1.2", labels={"version": "v1", "tier": "a"}),
                    WorkloadEndpoint(address="10.0.1.3", labels={"version": "v2"}),
                ),
            ),
        ),
        destination_rules=(
            DestinationRule(
                meta=meta("DestinationRule", "reviews"),
                host=REVIEWS,
                traffic_policy=policy("RANDOM"),
                subsets=(
                    Subset("v1", {"version": "v1"}),
                    Subset("v2", {"version": "v2"}, traffic_policy=policy("LEAST_REQUEST")),
                ),
            ),
        ),
        virtual_services=(
            VirtualService(
                meta=meta("VirtualService", "reviews"),
                hosts=(REVIEWS,),
                http=(HTTPRoute(route=(to(REVIEWS, "v1", 80), to(REVIEWS, "v2", 20))),),
            ),
        ),
    )


API = "api.shop.mesh"
BACKEND = "backend.shop.mesh"


def matches() -> MeshConfig:
    """Header, method and regex matches, OR-ed match blocks, a timeout, a weight-0
    destination, explicit and implied destination ports."""
    vs = VirtualService(
        meta=meta("VirtualService", "api", "shop"),
        hosts=(API,),
        http=(
            HTTPRoute(
                name="admin",
                match=(
                    HTTPMatchRequest(
                        uri=StringMatch("prefix", "/admin"),
                        headers={"x-user": StringMatch("exact", "root")},
                    ),
                    HTTPMatchRequest(uri=StringMatch("regex", "/root/.*"), ignore_uri_case=True),
                ),
                route=(to(BACKEND, port=9000),),
            ),
            HTTPRoute(
                match=(
                    HTTPMatchRequest(
                        uri=StringMatch("exact", "/orders"),
                        method=StringMatch("exact", "POST"),
                        headers={
                            "x-tenant": StringMatch("prefix", "acme-"),
                            "x-trace": StringMatch("regex", "[0-9a-f]{32}"),
                        },
                    ),
                ),
                route=(to(BACKEND),),
                timeout=2.5,
            ),
            HTTPRoute(name="rest", route=(to(API, weight=0), to(BACKEND, weight=100))),
        ),
    )
    return MeshConfig(
        service_entries=(
            service(API, (http(8000),), (WorkloadEndpoint(address="10.0.2.1"),), "shop"),
            service(
                BACKEND,
                (http(8000), http(9000, name="admin")),
                (WorkloadEndpoint(address="10.0.2.9", ports={"admin": 19000}),),
                "shop",
            ),
        ),
        virtual_services=(vs,),
    )


GREETER = "greeter.mesh"


def grpc_service() -> MeshConfig:
    """A gRPC service with LEAST_REQUEST (gRPC clients get ROUND_ROBIN) and a deadline."""
    return MeshConfig(
        service_entries=(
            service(
                GREETER,
                (ServicePort(50051, "GRPC", "grpc"),),
                (WorkloadEndpoint(address="127.0.0.1", ports={"grpc": 50061}),),
            ),
        ),
        destination_rules=(
            DestinationRule(
                meta=meta("DestinationRule", "greeter"),
                host=GREETER,
                traffic_policy=policy("LEAST_REQUEST"),
            ),
        ),
        virtual_services=(
            VirtualService(
                meta=meta("VirtualService", "greeter"),
                hosts=(GREETER,),
                http=(HTTPRoute(name="all", route=(to(GREETER),), timeout=1.0),),
            ),
        ),
    )


PAY = "pay.mesh"


def localities() -> MeshConfig:
    """Instances over three localities (and none), with weights."""
    return MeshConfig(
        service_entries=(
            service(
                PAY,
                (http(8080),),
                (
                    WorkloadEndpoint(address="10.1.0.2", locality="us-east/a/rack1", weight=3),
                    WorkloadEndpoint(address="10.1.0.1", locality="us-east/a/rack1"),
                    WorkloadEndpoint(address="10.1.1.1", locality="us-east/b"),
                    WorkloadEndpoint(address="10.2.0.1", locality="eu-west", weight=0),
                    WorkloadEndpoint(address="10.9.0.1"),
                ),
            ),
        )
    )


INVENTORY = "inventory.shop.mesh"


def workload_entries() -> MeshConfig:
    """A ServiceEntry selecting WorkloadEntries of its own namespace by labels."""

    def entry(name: str, namespace: str, address: str, labels: Mapping[str, str]) -> WorkloadEntry:
        return WorkloadEntry(
            meta=meta("WorkloadEntry", name, namespace),
            endpoint=WorkloadEndpoint(
                address=address, labels=labels, ports={"http": 7000}, locality="eu/z1"
            ),
        )

    return MeshConfig(
        service_entries=(
            service(INVENTORY, (http(8080),), namespace="shop", selector={"app": "inventory"}),
        ),
        workload_entries=(
            entry("other-ns", "other", "10.3.0.9", {"app": "inventory"}),
            entry("inv-b", "shop", "10.3.0.2", {"app": "inventory", "version": "v2"}),
            entry("inv-a", "shop", "10.3.0.1", {"app": "inventory", "version": "v1"}),
            entry("cart", "shop", "10.3.0.5", {"app": "cart"}),
        ),
    )


SHOP = "shop.mesh"
SHADOW = "shadow.mesh"
STOCK = "stock.mesh"


def policies() -> MeshConfig:
    """Every DestinationRule policy and VirtualService resilience field at once."""
    shop_rule = DestinationRule(
        meta=meta("DestinationRule", "shop"),
        host=SHOP,
        traffic_policy=TrafficPolicy(
            load_balancer=LoadBalancerSettings(
                consistent_hash=ConsistentHash("header", "x-user", minimum_ring_size=2048),
                locality_lb_setting=LocalityLbSetting(
                    failover=(LocalityRule("us-east", {"eu-west": 0}),)
                ),
            ),
            outlier_detection=OutlierDetection(
                consecutive_5xx_errors=3,
                consecutive_gateway_errors=2,
                consecutive_local_origin_failures=4,
                split_external_local_origin_errors=True,
                interval=5.0,
                base_ejection_time=60.0,
                max_ejection_percent=50,
                min_health_percent=25,
            ),
            connection_pool=ConnectionPool(
                max_connections=10,
                connect_timeout=0.25,
                http1_max_pending_requests=1,
                http2_max_requests=2,
                max_requests_per_connection=3,
                idle_timeout=30.0,
            ),
            port_level_settings=(
                PortTrafficPolicy(
                    9090,
                    load_balancer=LoadBalancerSettings(simple="LEAST_REQUEST", warmup_duration=20),
                ),
            ),
        ),
        subsets=(
            Subset("v1", {"version": "v1"}),
            Subset(
                "v2",
                {"version": "v2"},
                TrafficPolicy(
                    load_balancer=LoadBalancerSettings(
                        consistent_hash=ConsistentHash("cookie", "sid", "/", 3600.0, maglev=True),
                        locality_lb_setting=LocalityLbSetting(
                            distribute=(LocalityRule("*", {"us-east/*": 70, "eu-west/*": 30}),)
                        ),
                    ),
                    connection_pool=ConnectionPool(max_retries=7),
                ),
            ),
        ),
    )
    stock_rule = DestinationRule(
        meta=meta("DestinationRule", "stock"),
        host=STOCK,
        traffic_policy=TrafficPolicy(
            load_balancer=LoadBalancerSettings(simple="ROUND_ROBIN", warmup_duration=30.0),
            connection_pool=ConnectionPool(idle_timeout=60.0),
        ),
    )
    shop_routes = VirtualService(
        meta=meta("VirtualService", "shop"),
        hosts=(SHOP,),
        http=(
            HTTPRoute(
                name="moved",
                match=(HTTPMatchRequest(uri=StringMatch("prefix", "/old")),),
                redirect=HTTPRedirect("/new", "new.mesh", 8443, "https", 308),
                headers=Headers(response=HeaderOperations(set=(("x-moved", "yes"),))),
            ),
            HTTPRoute(
                name="api",
                match=(HTTPMatchRequest(uri=StringMatch("prefix", "/api")),),
                route=(to(SHOP, "v1", 90), to(SHOP, "v2", 10)),
                timeout=3.0,
                retries=HTTPRetry(
                    attempts=3,
                    per_try_timeout=0.5,
                    retry_on=("5xx", "unavailable", "retriable-status-codes"),
                    retriable_status_codes=(503, 429),
                    retry_remote_localities=True,
                ),
                fault=HTTPFaultInjection(
                    delay=FaultDelay(0.1, 0.5), abort=FaultAbort(0.0, grpc_status=14)
                ),
                mirrors=(Mirror(Destination(SHADOW), 12.5),),
                rewrite=HTTPRewrite(uri="/v2/api", authority="internal.shop.mesh"),
                headers=Headers(
                    request=HeaderOperations(
                        set=(("x-a", "1"),), add=(("x-b", "2"),), remove=("x-c",)
                    ),
                    response=HeaderOperations(remove=("server",)),
                ),
            ),
            HTTPRoute(
                name="rest",
                route=(to(SHOP, "v1"),),
                retries=HTTPRetry(attempts=0),
                fault=HTTPFaultInjection(abort=FaultAbort(100.0, http_status=503)),
                mirrors=(Mirror(Destination(SHADOW), 100.0, in_list=True),),
                rewrite=HTTPRewrite(uri_regex=("^/a/(.*)$", "/b/\\1")),
            ),
        ),
    )
    return MeshConfig(
        service_entries=(
            service(
                SHOP,
                (http(8080), ServicePort(9090, "GRPC", "grpc")),
                (
                    WorkloadEndpoint("10.4.0.1", labels={"version": "v1"}, locality="us-east/a"),
                    WorkloadEndpoint("10.4.0.2", labels={"version": "v1"}, locality="us-west/b"),
                    WorkloadEndpoint("10.4.0.3", labels={"version": "v2"}, locality="eu-west/c"),
                    WorkloadEndpoint("10.4.0.4", labels={"version": "v2"}, locality="us-east/a"),
                ),
            ),
            service(SHADOW, (http(8080),), (WorkloadEndpoint("10.4.1.1"),)),
            service(STOCK, (ServicePort(9090, "GRPC", "grpc"),), (WorkloadEndpoint("10.4.2.1"),)),
        ),
        destination_rules=(shop_rule, stock_rule),
        virtual_services=(shop_routes,),
    )


PAYMENTS = "payments.mesh"
LEDGER = "ledger.mesh"
LEGACY = "legacy.mesh"
JWKS = '{"keys": []}'


def security() -> MeshConfig:
    """mTLS and inbound policy: auto mTLS (every instance has a service account),
    an explicit DISABLE, a mixed service left plaintext, PeerAuthentication at
    three levels with a port override, AuthorizationPolicies and a
    RequestAuthentication for the `payments` workload (render it for a node
    with SERVICE_ACCOUNT payments in namespace shop, labels app=payments)."""

    def endpoint(
        address: str, port: int, account: str = "", version: str = "v1"
    ) -> WorkloadEndpoint:
        return WorkloadEndpoint(
            address=address,
            ports={"http": port},
            labels={"version": version},
            service_account=account,
        )

    def secured(kind: str, name: str, namespace: str = "shop") -> Meta:
        return meta(kind, name, namespace)

    return MeshConfig(
        service_entries=(
            service(PAYMENTS, (http(8080),), (endpoint("10.4.0.1", 9000, "payments"),), "shop"),
            service(
                LEDGER,
                (http(8080),),
                (endpoint("10.4.0.2", 9000, "ledger"), endpoint("10.4.0.3", 9000, "ledger", "v2")),
                "shop",
            ),
            service(
                LEGACY,
                (http(8080),),
                (endpoint("10.4.0.4", 9000, "legacy"), endpoint("10.4.0.5", 9000)),
                "shop",
            ),
        ),
        destination_rules=(
            DestinationRule(
                meta=meta("DestinationRule", "ledger", "shop"),
                host=LEDGER,
                subsets=(Subset("v2", {"version": "v2"}, TrafficPolicy(tls=ClientTls("DISABLE"))),),
            ),
        ),
        peer_authentications=(
            PeerAuthentication(
                secured("PeerAuthentication", "mesh", "istio-system"), mode="STRICT"
            ),
            PeerAuthentication(
                secured("PeerAuthentication", "payments"),
                selector={"app": "payments"},
                mode="UNSET",
                port_modes={9000: "PERMISSIVE"},
            ),
        ),
        authorization_policies=(
            AuthorizationPolicy(
                secured("AuthorizationPolicy", "deny-admin"),
                {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]},
            ),
            AuthorizationPolicy(
                secured("AuthorizationPolicy", "audit-all", "istio-system"),
                {"action": "AUDIT", "rules": [{}]},
            ),
            AuthorizationPolicy(
                secured("AuthorizationPolicy", "allow-web"),
                {
                    "selector": {"matchLabels": {"app": "payments"}},
                    "rules": [{"from": [{"source": {"namespaces": ["web"]}}]}],
                },
            ),
            AuthorizationPolicy(
                secured("AuthorizationPolicy", "other-workload"),
                {"selector": {"matchLabels": {"app": "ledger"}}, "rules": [{}]},
            ),
        ),
        request_authentications=(
            RequestAuthentication(
                secured("RequestAuthentication", "jwt"),
                {"jwtRules": [{"issuer": "https://issuer.example", "jwks": JWKS}]},
            ),
        ),
    )


SAMPLES: Mapping[str, Callable[[], MeshConfig]] = {
    "simple": simple,
    "canary": canary,
    "matches": matches,
    "grpc": grpc_service,
    "localities": localities,
    "workload_entries": workload_entries,
    "policies": policies,
    "security": security,
}
