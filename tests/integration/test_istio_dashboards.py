"""Istio's Grafana dashboards and Kiali's graph read the mesh's metrics
unchanged (issue 23 acceptance).

A small meshed system in this process - a `productpage` client Mesh calling an
HTTP service (`reviews`: 200, 404, 503) and a gRPC service (`greeter`: OK,
NOT_FOUND) through a real control plane - exports its metrics for a real
Prometheus (Debian's), while traffic keeps flowing. Then the PromQL of the
panels of Istio's mesh, service and workload dashboards (written here as the
dashboards' JSON has them, with the template variables filled in as Grafana
would: `$__rate_interval` -> 1m, `$qrep` -> destination|source, `$service`,
`$namespace`, `$workload`, `$srcns`, `$srcwl`, `$dstns`, `$dstwl`, `$dstsvc`
-> the system's names) and Kiali's graph queries run against it: every
HTTP/gRPC panel must return data with a finite value, and Kiali's edges must
name both ends by workload, app, canonical service/revision and cluster.

Not run here: the TCP panels (no TCP traffic is meshed in library mode;
test_gateway_tcp_dashboards.py runs them against a gateway's Envoy) and the
`connection_security_policy="mutual_tls"` variants (this system runs without
the CA: its non-mTLS twin panel is run, and the reporter=source series says
`unknown`, as Istio's do); test_istio_dashboards_mtls.py runs both variants on
a system with the CA and mTLS.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from meshlab import LocalMesh, service_entry
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server
from test_telemetry_e2e import Prometheus
from test_telemetry_metrics import EchoApp

from proxyless_mesh import Mesh
from proxyless_mesh.integrations import TelemetryMiddleware, TelemetryServerInterceptor
from proxyless_mesh.telemetry import Telemetry, TelemetryConfig, Workload

NS = "default"
REVIEWS = "reviews.default.svc.cluster.local"
GREETER = "greeter.default.svc.cluster.local"
#: Grafana's template variables, as its variable queries would fill them.
VARIABLES = {
    "$__rate_interval": "1m",
    "$qrep": "destination|source",
    "$namespace": NS,
    "$srcns": NS,
    "$dstns": NS,
    "$srcwl": "productpage",
    "$dstsvc": f"{REVIEWS}|{GREETER}",
}


class ReviewsApp(EchoApp):
    """/missing -> 404; otherwise as EchoApp (/fail -> 503, else 200)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/missing":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await super().__call__(scope, receive, send)


@dataclass
class System:
    reviews_port: int
    greeter_port: int
    metrics_port: int
    config: TelemetryConfig  # every side's: one meter provider, one /metrics


@pytest.fixture
def system() -> Iterator[System]:
    with serve_system() as running:
        yield running


@contextlib.contextmanager
def serve_system() -> Iterator[System]:
    """The servers and one Prometheus endpoint for every side's metrics
    (also the console tests' meshed system)."""
    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    config = TelemetryConfig(meter_provider=provider, tracing=False)
    reviews, greeter = workloads(config)
    metrics_server, _ = start_http_server(0, addr="127.0.0.1")
    try:
        with serve_servers(reviews, greeter) as (reviews_port, grpc_port):
            yield System(reviews_port, grpc_port, int(metrics_server.server_port), config)
    finally:
        metrics_server.shutdown()
        provider.shutdown()  # unregisters the reader from prometheus_client's registry


def workloads(config: TelemetryConfig) -> tuple[Telemetry, Telemetry]:
    """The telemetry of the two server workloads (reviews, greeter)."""
    reviews = Workload("reviews-v1", NS, labels={"app": "reviews", "version": "v1"})
    greeter = Workload("greeter-v1", NS, labels={"app": "greeter", "version": "v1"})
    return Telemetry(config, reviews), Telemetry(config, greeter)


@contextlib.contextmanager
def serve_servers(reviews: Telemetry, greeter: Telemetry) -> Iterator[tuple[int, int]]:
    """The HTTP (reviews) and gRPC (greeter) servers; yields their ports."""
    import uvicorn

    app = TelemetryMiddleware(ReviewsApp(), telemetry=reviews, service=REVIEWS)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    http_thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    http_thread.start()

    def ok(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"hello"

    def missing(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")
        raise AssertionError("abort returns only by raising")

    interceptor = TelemetryServerInterceptor(telemetry=greeter, service=GREETER)
    grpc_server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[interceptor])
    grpc_server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "greeter.Greeter",
                {
                    "Ok": grpc.unary_unary_rpc_method_handler(ok),
                    "Missing": grpc.unary_unary_rpc_method_handler(missing),
                },
            ),
        )
    )
    grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        yield sock.getsockname()[1], grpc_port
    finally:
        grpc_server.stop(None).wait(5)
        server.should_exit = True
        http_thread.join(10)
        sock.close()


def configure(lab: LocalMesh, system: System, control_plane_args: Sequence[str] = ()) -> None:
    lab.write_config(
        "reviews.yaml", service_entry(REVIEWS, 9080, [("127.0.0.1", system.reviews_port, {})])
    )
    lab.write_config(
        "greeter.yaml",
        service_entry(GREETER, 50051, [("127.0.0.1", system.greeter_port, {})], protocol="GRPC"),
    )
    lab.start_control_plane(extra_args=control_plane_args)


def traffic(mesh: Mesh, stop: threading.Event) -> None:
    """Each round: 2 x 200, 404, 503 over HTTP; OK and NOT_FOUND over gRPC."""
    with httpx.Client(transport=mesh.httpx_transport(), timeout=10) as client:
        channel = mesh.grpc_channel(f"{GREETER}:50051")
        ok = channel.unary_unary("/greeter.Greeter/Ok")
        missing = channel.unary_unary("/greeter.Greeter/Missing")
        while not stop.is_set():
            for path, status in (("/ok", 200), ("/ok", 200), ("/missing", 404), ("/fail", 503)):
                assert client.get(f"http://{REVIEWS}:9080{path}").status_code == status
            assert ok(b"x", timeout=5) == b"hello"
            with pytest.raises(grpc.RpcError):
                missing(b"x", timeout=5)
            stop.wait(0.05)
        channel.close()


def fill(query: str, **more: str) -> str:
    for name, value in sorted({**VARIABLES, **more}.items(), key=lambda kv: -len(kv[0])):
        query = query.replace(name, value)
    return query


# -- the panels' queries ------------------------------------------------------------
# Mesh dashboard (global stats and the HTTP/gRPC workloads table).
MESH = [
    'round(sum(rate(istio_requests_total{reporter=~"source|waypoint"}[$__rate_interval])), 0.01)',
    'sum(rate(istio_requests_total{reporter=~"source|waypoint",response_code!~"5.."}'
    '[$__rate_interval])) / sum(rate(istio_requests_total{reporter=~"source|waypoint"}'
    "[$__rate_interval]))",
    'round(sum(rate(istio_requests_total{reporter=~"source|waypoint",response_code=~"4.."}'
    "[$__rate_interval])), 0.01)or vector(0)",
    'round(sum(rate(istio_requests_total{reporter=~"source|waypoint",response_code=~"5.."}'
    "[$__rate_interval])), 0.01)or vector(0)",
    "label_join(sum by (destination_workload,destination_workload_namespace,destination_service)"
    ' (rate(istio_requests_total{reporter=~"source|waypoint"}[$__rate_interval])), '
    '"destination_workload_var", ".", "destination_workload", "destination_workload_namespace")',
    *(
        "label_join(histogram_quantile("
        + q
        + ", sum by (le,destination_workload,destination_workload_namespace) "
        '(rate(istio_request_duration_milliseconds_bucket{reporter=~"source|waypoint"}'
        '[$__rate_interval]))), "destination_workload_var", ".", "destination_workload", '
        '"destination_workload_namespace")'
        for q in ("0.5", "0.9", "0.99")
    ),
    "label_join(sum by (destination_workload,destination_workload_namespace) (rate(istio_requests_"
    'total{reporter=~"source|waypoint",response_code!~"5.."}[$__rate_interval]))/sum by '
    "(destination_workload,destination_workload_namespace) (rate(istio_requests_total"
    '{reporter=~"source|waypoint"}[$__rate_interval])), "destination_workload_var", ".", '
    '"destination_workload", "destination_workload_namespace")',
    "sum by (component,tag) (istio_build)",
]
# Service dashboard ($service: each HTTP and gRPC service in turn).
_BY_SOURCE = "source_workload,source_workload_namespace"
_BY_DESTINATION = "destination_workload,destination_workload_namespace"
_SERVICE_SCOPE = 'reporter=~"$qrep",destination_service="$service"'
_INCOMING = (
    'connection_security_policy!="mutual_tls",destination_service="$service",'
    'reporter=~"$qrep",source_workload=~"$srcwl",source_workload_namespace=~"$srcns"'
)
_WORKLOADS = (
    'connection_security_policy!="mutual_tls",destination_service="$service",'
    'reporter=~"$qrep",destination_workload=~"$dstwl",destination_workload_namespace=~"$dstns"'
)


def _panels_by(scope: str, by: str) -> list[str]:
    """The by-source / by-workload panel group: requests by code, success
    rate, P50/P90/P99 duration, request and response sizes."""
    queries = [
        f"round(sum(irate(istio_requests_total{{{scope}}}[$__rate_interval])) "
        f"by ({by}, response_code), 0.001)",
        f'sum(irate(istio_requests_total{{{scope},response_code!~"5.*"}}[$__rate_interval])) '
        f"by ({by}) / sum(irate(istio_requests_total{{{scope}}}[$__rate_interval])) by ({by})",
    ]
    for metric in ("istio_request_duration_milliseconds", "istio_request_bytes"):
        queries += [
            f"histogram_quantile({q}, sum(irate({metric}_bucket{{{scope}}}[$__rate_interval])) "
            f"by ({by}, le))"
            for q in ("0.50", "0.90", "0.99")
        ]
    queries.append(
        f"histogram_quantile(0.50, sum(irate(istio_response_bytes_bucket{{{scope}}}"
        f"[$__rate_interval])) by ({by}, le))"
    )
    return queries


SERVICE = [
    f"round(sum(irate(istio_requests_total{{{_SERVICE_SCOPE}}}[$__rate_interval])), 0.001)",
    f'sum(irate(istio_requests_total{{{_SERVICE_SCOPE},response_code!~"5.*"}}[$__rate_interval]))'
    f" / (sum(irate(istio_requests_total{{{_SERVICE_SCOPE}}}[$__rate_interval])) or on () "
    "vector(1))",
    *(
        f"(histogram_quantile({q}, sum(irate(istio_request_duration_milliseconds_bucket"
        f"{{{_SERVICE_SCOPE}}}[$__rate_interval])) by (le)) / 1000) or histogram_quantile({q}, "
        f"sum(irate(istio_request_duration_seconds_bucket{{{_SERVICE_SCOPE}}}[$__rate_interval]))"
        " by (le))"
        for q in ("0.50", "0.90", "0.99")
    ),
    'round(sum(irate(istio_requests_total{reporter="destination",destination_service="$service"}'
    "[$__rate_interval])), 0.001)",
    *_panels_by(_INCOMING, _BY_SOURCE),
    *_panels_by(_WORKLOADS, _BY_DESTINATION),
]
# The service dashboard's variable queries (what fills $srcwl, $dstwl, $dstns).
SERVICE_VARIABLES = [
    'sum(istio_requests_total{reporter=~"$qrep", destination_service="$service"}) '
    "by (source_workload_namespace)",
    'sum(istio_requests_total{reporter=~"$qrep", destination_service="$service", '
    'source_workload_namespace=~"$srcns"}) by (source_workload)',
    'sum(istio_requests_total{reporter=~"$qrep", destination_service="$service"}) '
    "by (destination_workload_namespace)",
    'sum(istio_requests_total{reporter=~"$qrep", destination_service="$service", '
    'destination_workload_namespace=~"$dstns"}) by (destination_workload)',
]
# Workload dashboard ($workload: each server workload; the outbound panels for
# the client workload).
_INBOUND = (
    'reporter=~"$qrep",destination_workload_namespace=~"$namespace",'
    'destination_workload=~"$workload"'
)
_OUTBOUND = (
    'reporter=~"$qrep",source_workload_namespace=~"$namespace",source_workload=~"$workload",'
    'destination_service=~"$dstsvc"'
)
WORKLOAD_INBOUND = [
    f"round(sum(irate(istio_requests_total{{{_INBOUND}}}[$__rate_interval])), 0.001)",
    f'sum(irate(istio_requests_total{{{_INBOUND},response_code!~"5.*"}}[$__rate_interval])) / '
    f"sum(irate(istio_requests_total{{{_INBOUND}}}[$__rate_interval]))",
    f"(histogram_quantile(0.90, sum(irate(istio_request_duration_milliseconds_bucket{{{_INBOUND}}}"
    "[$__rate_interval])) by (le)) / 1000)",
    *_panels_by(
        'connection_security_policy!="mutual_tls",destination_workload="$workload",'
        'reporter=~"$qrep",destination_workload_namespace=~"$namespace",'
        'source_workload=~"$srcwl",source_workload_namespace=~"$srcns"',
        _BY_SOURCE,
    ),
]
WORKLOAD_OUTBOUND = [
    *_panels_by(
        'connection_security_policy!="mutual_tls",source_workload="$workload",'
        'reporter=~"$qrep",source_workload_namespace=~"$namespace",'
        'destination_service=~"$dstsvc"',
        "destination_service",
    ),
    f"round(sum(irate(istio_requests_total{{{_OUTBOUND}}}[$__rate_interval])) "
    "by (destination_service, response_code), 0.001)",
]
WORKLOAD_VARIABLES = [
    "sum(istio_requests_total) by (destination_workload_namespace)",
    'sum(istio_requests_total{destination_workload_namespace=~"$namespace"}) '
    "by (destination_workload)",
    'sum(istio_requests_total{source_workload_namespace=~"$namespace"}) by (source_workload)',
]
# Kiali's graph (workload graph of one namespace, with its appenders).
_KIALI_BY = (
    "source_cluster,source_workload_namespace,source_workload,source_canonical_service,"
    "source_canonical_revision,destination_cluster,destination_service_namespace,"
    "destination_service,destination_service_name,destination_workload_namespace,"
    "destination_workload,destination_canonical_service,destination_canonical_revision"
)
KIALI = [
    f'sum(rate(istio_requests_total{{reporter="source",source_workload_namespace="{NS}"}}[60s])) '
    f"by ({_KIALI_BY},request_protocol,response_code,grpc_response_status,response_flags) > 0",
    f'sum(rate(istio_requests_total{{reporter="destination",destination_service_namespace="{NS}"}}'
    f"[60s])) by ({_KIALI_BY},request_protocol,response_code,grpc_response_status,"
    "response_flags) > 0",
    f'sum(rate(istio_requests_total{{reporter="destination",destination_service_namespace="{NS}"}}'
    f"[60s])) by ({_KIALI_BY},connection_security_policy) > 0",
    "histogram_quantile(0.95, sum(rate(istio_request_duration_milliseconds_bucket"
    f'{{reporter="source",source_workload_namespace="{NS}"}}[60s])) by (le,{_KIALI_BY}))',
    f'sum(rate(istio_request_bytes_sum{{reporter="source",source_workload_namespace="{NS}"}}'
    f"[60s])) by ({_KIALI_BY}) > 0",
    f'sum(rate(istio_response_bytes_sum{{reporter="source",source_workload_namespace="{NS}"}}'
    f"[60s])) by ({_KIALI_BY}) > 0",
]

#: Kiali's edges of the meshed caller, as kiali_edges names them.
MESH_EDGES = {
    ("productpage", "productpage", "v1", "reviews-v1", "reviews", "v1", "reviews",
     "Kubernetes", "Kubernetes"),
    ("productpage", "productpage", "v1", "greeter-v1", "greeter", "v1", "greeter",
     "Kubernetes", "Kubernetes"),
}  # fmt: skip


def has_data(prometheus: Prometheus, query: str) -> list[dict[str, Any]]:
    result = prometheus.query(query)
    finite = [r for r in result if math.isfinite(float(r["value"][1]))]
    assert finite, f"no data for panel query:\n{query}\nanswer: {json.dumps(result)[:500]}"
    return finite


def test_istio_dashboards_and_kiali_read_the_mesh(
    lab: LocalMesh, system: System, tmp_path: Path
) -> None:
    configure(lab, system)
    # irate() reads the last two samples: 1 s apart, each holds several traffic
    # rounds even on a loaded machine (at 250 ms, two equal samples made a
    # panel's quantile NaN when the traffic thread was starved).
    prometheus = Prometheus(tmp_path, scrape_interval="1s")
    stop = threading.Event()
    bootstrap = lab.bootstrap("productpage-1", labels={"app": "productpage", "version": "v1"})
    try:
        prometheus.start({"mesh": [f"127.0.0.1:{system.metrics_port}"]})
        with Mesh.from_bootstrap(bootstrap, telemetry=system.config) as mesh:
            worker = threading.Thread(target=traffic, args=(mesh, stop))
            worker.start()
            try:
                run_panels(prometheus)
            finally:
                stop.set()
                worker.join(30)
    finally:
        prometheus.stop()


def wait_for_rates(prometheus: Prometheus) -> None:
    """Until both protocols' series have been scraped twice (irate needs two
    samples that differ)."""
    deadline = time.monotonic() + 60
    while True:  # Prometheus pushes nothing: poll its API (scrapes every second)
        rates = prometheus.query(
            'sum by (request_protocol) (irate(istio_requests_total{reporter="source"}[1m])) > 0'
        )
        if len(rates) == 2:
            break
        assert time.monotonic() < deadline, f"no rates of both protocols yet: {rates}"
        time.sleep(0.2)


def run_panels(prometheus: Prometheus) -> None:
    wait_for_rates(prometheus)
    for query in MESH:
        has_data(prometheus, fill(query))
    for service in (REVIEWS, GREETER):
        workload = "reviews-v1" if service == REVIEWS else "greeter-v1"
        for query in [*SERVICE, *SERVICE_VARIABLES]:
            has_data(prometheus, fill(query, **{"$service": service, "$dstwl": workload}))
        for query in WORKLOAD_INBOUND:
            has_data(prometheus, fill(query, **{"$workload": workload}))
    for query in [*WORKLOAD_OUTBOUND, *WORKLOAD_VARIABLES]:
        has_data(prometheus, fill(query, **{"$workload": "productpage"}))
    assert kiali_edges(prometheus, KIALI) == MESH_EDGES
    codes = {
        (e["metric"]["request_protocol"], e["metric"]["response_code"],
         e["metric"].get("grpc_response_status", ""))  # empty: not stored
        for e in has_data(prometheus, KIALI[1])
    }  # fmt: skip
    assert codes == {
        ("http", "200", ""), ("http", "404", ""), ("http", "503", ""),
        ("grpc", "200", "0"), ("grpc", "200", "5"),
    }  # fmt: skip


def kiali_edges(prometheus: Prometheus, queries: Sequence[str]) -> set[tuple[str, ...]]:
    """Kiali's edges (each query must answer): both ends by workload,
    canonical service/revision, service name and cluster."""
    return {
        (
            e["metric"]["source_workload"],
            e["metric"]["source_canonical_service"],
            e["metric"]["source_canonical_revision"],
            e["metric"]["destination_workload"],
            e["metric"]["destination_canonical_service"],
            e["metric"]["destination_canonical_revision"],
            e["metric"]["destination_service_name"],
            e["metric"]["source_cluster"],
            e["metric"]["destination_cluster"],
        )
        for query in queries
        for e in has_data(prometheus, query)
    }
