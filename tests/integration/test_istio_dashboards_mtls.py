"""Istio's dashboards and Kiali's graph on a mesh that runs mutual TLS
(issue 23 acceptance, the `connection_security_policy="mutual_tls"` half).

The control plane runs its CA. `reviews-v1` (HTTP, PERMISSIVE on one port)
and `greeter-v1` (gRPC: a STRICT `add_mesh_port` port and a plaintext one)
hold identities; their ServiceEntries name the service account, so the
`productpage` Mesh (identity `default/productpage`) calls both over mTLS
(auto mTLS; library-mode gRPC through the TLS bridge). Callers outside the
mesh (plain httpx, a plain grpc channel) reach the same servers without TLS:
the destination side reports them `connection_security_policy="none"`,
`source_workload="unknown"`.

Every panel of Istio's service, workload and mesh dashboards (the queries of
test_istio_dashboards.py) runs in both variants - `="mutual_tls"` and
`!="mutual_tls"` - and must return data; `$srcwl` is what Grafana's "All"
fills from its variable query (productpage|unknown). Kiali's graph queries
run as Kiali issues them (istio_requests_total by reporter, gRPC message
counts, the security appender), and the security appender's edges must split
exactly: mesh caller -> mutual_tls, outside caller -> none.

Not run: Kiali's and the dashboards' TCP queries (istio_tcp_*): library mode
carries no TCP, nothing here emits TCP series.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from identities import listening_socket, serving_asgi
from meshlab import LocalMesh, service_entry
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from processes import reserved_port
from prometheus_client import start_http_server
from test_istio_dashboards import (
    _KIALI_BY,
    GREETER,
    KIALI,
    MESH,
    MESH_EDGES,
    NS,
    REVIEWS,
    SERVICE,
    SERVICE_VARIABLES,
    WORKLOAD_INBOUND,
    WORKLOAD_OUTBOUND,
    WORKLOAD_VARIABLES,
    ReviewsApp,
    fill,
    has_data,
    kiali_edges,
    wait_for_rates,
)
from test_telemetry_e2e import Prometheus

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.integrations import TelemetryMiddleware, TelemetryServerInterceptor
from proxyless_mesh.serving import add_mesh_port
from proxyless_mesh.telemetry import Telemetry, TelemetryConfig, Workload

PLAIN = 'connection_security_policy!="mutual_tls"'
MUTUAL = 'connection_security_policy="mutual_tls"'
#: Grafana's "All" over the $srcwl variable query: the mesh caller and the outside ones.
SOURCES = {"$srcwl": "productpage|unknown"}
# Kiali's graph: gRPC message rates (its "sent"/"received" gRPC options) and
# the requests of callers outside the mesh, as its workload graph asks them.
KIALI_MORE = [
    *(
        f'sum(rate({metric}{{reporter="{reporter}",{scope}="{NS}"}}[60s])) by ({_KIALI_BY}) > 0'
        for metric in ("istio_request_messages_total", "istio_response_messages_total")
        for reporter, scope in (
            ("source", "source_workload_namespace"),
            ("destination", "destination_service_namespace"),
        )
    ),
    f'sum(rate(istio_requests_total{{reporter="destination",source_workload="unknown",'
    f'destination_service_namespace="{NS}"}}[60s])) by ({_KIALI_BY},request_protocol,'
    "response_code,grpc_response_status,response_flags) > 0",
]


@dataclass
class MtlsSystem:
    reviews_port: int  # PERMISSIVE: mTLS from the mesh, plaintext from outside
    greeter_plain_port: int  # the STRICT one is the ServiceEntry's
    metrics_port: int
    config: TelemetryConfig


def workload_mesh(lab: LocalMesh, node: str, sa: str) -> Mesh:
    token = lab.token(NS, sa)
    return Mesh(Bootstrap.from_file(lab.bootstrap(node, NS, sa, token=token)))


@contextlib.contextmanager
def serve_mtls_system(lab: LocalMesh) -> Iterator[MtlsSystem]:
    """Control plane with its CA, the two servers in their identities, one
    /metrics page for every side."""
    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    config = TelemetryConfig(meter_provider=provider, tracing=False)
    greeter_workload = Workload("greeter-v1", NS, labels={"app": "greeter", "version": "v1"})
    reviews_workload = Workload("reviews-v1", NS, labels={"app": "reviews", "version": "v1"})
    interceptor = TelemetryServerInterceptor(
        telemetry=Telemetry(config, greeter_workload), service=GREETER
    )
    grpc_server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[interceptor])
    grpc_server.add_generic_rpc_handlers((greeter_handlers(),))
    app = TelemetryMiddleware(
        ReviewsApp(), telemetry=Telemetry(config, reviews_workload), service=REVIEWS
    )
    metrics_server, _ = start_http_server(0, addr="127.0.0.1")
    try:
        with (
            listening_socket() as sock,
            reserved_port() as strict_port,  # named in the config before the mesh binds it
            contextlib.ExitStack() as stack,
        ):
            reviews_port = sock.getsockname()[1]
            lab.write_config(
                "reviews.yaml",
                service_entry(
                    REVIEWS, 9080, [("127.0.0.1", reviews_port, {})], service_account="reviews"
                ),
            )
            lab.write_config(
                "greeter.yaml",
                service_entry(
                    GREETER,
                    50051,
                    [("127.0.0.1", strict_port, {})],
                    protocol="GRPC",
                    service_account="greeter",
                ),
            )
            lab.start_control_plane(extra_args=["--leaf-ttl", "1h"])
            reviews = stack.enter_context(workload_mesh(lab, "reviews-1", "reviews"))
            greeter = stack.enter_context(workload_mesh(lab, "greeter-1", "greeter"))
            add_mesh_port(
                grpc_server, f"127.0.0.1:{strict_port}", greeter, mode="STRICT", port_name=None
            )
            plain_port = grpc_server.add_insecure_port("127.0.0.1:0")
            grpc_server.start()
            stack.callback(lambda: grpc_server.stop(None).wait(5))
            stack.enter_context(serving_asgi(app, reviews, sock, mode="PERMISSIVE"))
            yield MtlsSystem(reviews_port, plain_port, int(metrics_server.server_port), config)
    finally:
        metrics_server.shutdown()
        provider.shutdown()
        grpc_server.stop(None).wait(5)


def greeter_handlers() -> grpc.GenericRpcHandler:
    def ok(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"hello"

    def missing(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")
        raise AssertionError("abort returns only by raising")

    return grpc.method_handlers_generic_handler(
        "greeter.Greeter",
        {
            "Ok": grpc.unary_unary_rpc_method_handler(ok),
            "Missing": grpc.unary_unary_rpc_method_handler(missing),
        },
    )


def mesh_and_outside_traffic(mesh: Mesh, system: MtlsSystem, stop: threading.Event) -> None:
    """Each round, from the mesh (mTLS) and from outside (plaintext): HTTP
    200, 404, 503 and gRPC OK, NOT_FOUND."""
    with contextlib.ExitStack() as stack:
        meshed = stack.enter_context(
            httpx.Client(
                transport=mesh.httpx_transport(), timeout=10, base_url=f"http://{REVIEWS}:9080"
            )
        )
        outside = stack.enter_context(
            httpx.Client(timeout=10, base_url=f"http://127.0.0.1:{system.reviews_port}")
        )
        channels = [
            stack.enter_context(mesh.grpc_channel(f"{GREETER}:50051")),
            stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{system.greeter_plain_port}")),
        ]
        while not stop.is_set():
            for client in (meshed, outside):
                for path, status in (("/ok", 200), ("/missing", 404), ("/fail", 503)):
                    assert client.get(path).status_code == status
            for channel in channels:
                assert channel.unary_unary("/greeter.Greeter/Ok")(b"x", timeout=5) == b"hello"
                with pytest.raises(grpc.RpcError):
                    channel.unary_unary("/greeter.Greeter/Missing")(b"x", timeout=5)
            stop.wait(0.05)


def test_dashboards_and_kiali_in_both_security_variants(lab: LocalMesh, tmp_path: Path) -> None:
    prometheus = Prometheus(tmp_path, scrape_interval="1s")
    stop = threading.Event()
    try:
        with serve_mtls_system(lab) as system:
            prometheus.start({"mesh": [f"127.0.0.1:{system.metrics_port}"]})
            bootstrap = lab.bootstrap(
                "productpage-1",
                NS,
                "productpage",
                token=lab.token(NS, "productpage"),
                labels={"app": "productpage", "version": "v1"},
            )
            with Mesh.from_bootstrap(bootstrap, telemetry=system.config) as mesh:
                worker = threading.Thread(
                    target=mesh_and_outside_traffic, args=(mesh, system, stop)
                )
                worker.start()
                try:
                    wait_for_rates(prometheus)
                    run_both_variants(prometheus)
                    run_kiali(prometheus)
                finally:
                    stop.set()
                    worker.join(30)
    finally:
        prometheus.stop()


def run_both_variants(prometheus: Prometheus) -> None:
    for query in MESH:
        has_data(prometheus, fill(query))
    for variant in (PLAIN, MUTUAL):
        for service, workload in ((REVIEWS, "reviews-v1"), (GREETER, "greeter-v1")):
            for query in [*SERVICE, *SERVICE_VARIABLES]:
                filled = fill(
                    query.replace(PLAIN, variant),
                    **SOURCES,
                    **{"$service": service, "$dstwl": workload},
                )
                has_data(prometheus, filled)
            for query in WORKLOAD_INBOUND:
                filled = fill(query.replace(PLAIN, variant), **SOURCES, **{"$workload": workload})
                has_data(prometheus, filled)
        for query in [*WORKLOAD_OUTBOUND, *WORKLOAD_VARIABLES]:
            has_data(
                prometheus, fill(query.replace(PLAIN, variant), **{"$workload": "productpage"})
            )


def run_kiali(prometheus: Prometheus) -> None:
    """Every graph query answers; the mesh caller's edges are named on both
    ends, and the security appender splits mesh (mTLS) from outside callers."""
    for query in [*KIALI, *KIALI_MORE]:
        has_data(prometheus, query)
    assert kiali_edges(prometheus, [KIALI[0], KIALI_MORE[0], KIALI_MORE[2]]) == MESH_EDGES
    security = {
        (
            e["metric"]["source_workload"],
            e["metric"]["destination_workload"],
            e["metric"]["connection_security_policy"],
        )
        for e in has_data(prometheus, KIALI[2])
    }
    assert security == {
        ("productpage", "reviews-v1", "mutual_tls"),
        ("productpage", "greeter-v1", "mutual_tls"),
        ("unknown", "reviews-v1", "none"),
        ("unknown", "greeter-v1", "none"),
    }
