"""Spans are named and tagged as Istio's proxies name and tag them."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxyless_mesh.bootstrap import Bootstrap, XdsServer
from proxyless_mesh.model import Locality
from proxyless_mesh.telemetry import Telemetry, TelemetryConfig, Workload


def test_server_span_has_istios_name_and_tags() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    bootstrap = Bootstrap(
        xds_servers=(XdsServer("127.0.0.1:1"),),
        node_id="ratings-v1-1",
        locality=Locality(region="eu", zone="eu-west-1a"),
        node_metadata={"NAMESPACE": "books", "LABELS": {"app": "ratings", "version": "v1"}},
    )
    telemetry = Telemetry(
        TelemetryConfig(tracer_provider=provider, metrics=False),
        Workload.from_bootstrap(bootstrap),
    )
    call = telemetry.call("destination", "http", "POST", "ratings.books.svc:9080", "/rate")
    assert call is not None
    call.start_server_span({"x-request-id": "abc"}.get)
    call.request_bytes = 12
    call.finish(503)
    (span,) = exporter.get_finished_spans()
    assert span.name == "ratings.books.svc:9080/*"
    tags = dict(span.attributes or {})
    expected = {
        "component": "proxy",
        "node_id": "ratings-v1-1",
        "zone": "eu-west-1a",
        "istio.namespace": "books",
        "istio.canonical_service": "ratings",
        "istio.canonical_revision": "v1",
        "istio.mesh_id": "cluster.local",
        "http.method": "POST",
        "http.url": "http://ratings.books.svc:9080/rate",
        "http.protocol": "HTTP/1.1",
        "http.status_code": "503",
        "response_flags": "-",
        "request_size": "12",
        "guid:x-request-id": "abc",
        "error": True,
        # the OpenTelemetry attributes stay beside them:
        "http.request.method": "POST",
        "http.response.status_code": 503,
    }
    assert {key: tags.get(key) for key in expected} == expected
