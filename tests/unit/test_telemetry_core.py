"""Telemetry core: identity, labels, propagation, containment of failures."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from proxyless_mesh.bootstrap import Bootstrap, XdsServer
from proxyless_mesh.telemetry import B3Propagator, Telemetry, TelemetryConfig, Workload
from proxyless_mesh.telemetry._config import service_labels


def tracing() -> tuple[InMemorySpanExporter, TracerProvider]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, provider


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    return [
        p
        for rm in (data.resource_metrics if data else ())
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == name
        for p in m.data.data_points
    ]


def test_workload_from_bootstrap_metadata() -> None:
    bootstrap = Bootstrap(
        xds_servers=(XdsServer("127.0.0.1:1"),),
        node_id="reviews-7f9",
        node_cluster="reviews",
        node_metadata={"NAMESPACE": "shop", "SERVICE_ACCOUNT": "reviews-sa"},
        proxyless_mesh={"trust_domain": "example.org"},
    )
    workload = Workload.from_bootstrap(bootstrap)
    assert (workload.name, workload.namespace, workload.principal) == (
        "reviews",
        "shop",
        "spiffe://example.org/ns/shop/sa/reviews-sa",
    )
    named = Bootstrap(
        xds_servers=(XdsServer("127.0.0.1:1"),),
        node_id="n1",
        node_metadata={"NAMESPACE": "shop", "WORKLOAD_NAME": "reviews-v2"},
    )
    assert Workload.from_bootstrap(named).name == "reviews-v2"
    assert Workload.from_bootstrap(named).principal == "unknown"


def test_service_labels() -> None:
    assert service_labels("reviews.shop.mesh") == ("reviews", "shop")
    assert service_labels("reviews.shop.svc.cluster.local") == ("reviews", "shop")
    assert service_labels("localhost") == ("localhost", "unknown")


def test_metrics_have_istio_names_labels_and_values() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(
        TelemetryConfig(meter_provider=MeterProvider(metric_readers=[reader]), tracing=False),
        Workload("front", "shop", "spiffe://cluster.local/ns/shop/sa/front"),
    )
    call = telemetry.call("source", "http", "GET", "reviews.shop.mesh:8080", "/x/1")
    assert call is not None
    call.routed(
        "r", "outbound|8080||reviews.shop.mesh", True, "spiffe://cluster.local/ns/shop/sa/rev"
    )
    call.request_bytes, call.response_bytes = 10, 300
    call.finish(503, ("UF", "URX"))
    call.finish(200)  # once only
    (count,) = points(reader, "istio_requests_total")
    assert count.value == 1
    assert dict(count.attributes) == {
        "reporter": "source",
        "source_workload": "front",
        "source_workload_namespace": "shop",
        "source_principal": "spiffe://cluster.local/ns/shop/sa/front",
        "source_app": "unknown",
        "source_version": "unknown",
        "source_cluster": "Kubernetes",
        "source_canonical_service": "front",
        "source_canonical_revision": "latest",
        "destination_service": "reviews.shop.mesh",
        "destination_service_name": "reviews",
        "destination_service_namespace": "shop",
        "destination_workload": "unknown",
        "destination_workload_namespace": "unknown",
        "destination_principal": "spiffe://cluster.local/ns/shop/sa/rev",
        "destination_app": "unknown",
        "destination_version": "unknown",
        "destination_cluster": "unknown",
        "destination_canonical_service": "unknown",
        "destination_canonical_revision": "unknown",
        "request_protocol": "http",
        "response_code": "503",
        "grpc_response_status": "",
        "response_flags": "UF,URX",
        "connection_security_policy": "unknown",  # Istio: the destination decides
    }
    (size,) = points(reader, "istio_response_bytes")
    assert size.sum == 300
    (duration,) = points(reader, "istio_request_duration_milliseconds")
    assert duration.count == 1


def test_label_sets_are_bounded() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(
        TelemetryConfig(meter_provider=MeterProvider(metric_readers=[reader]), max_label_sets=2)
    )
    for i in range(10):  # ten Host headers a client chose
        call = telemetry.call("destination", "http", "GET", f"h{i}.ns.mesh:80", "/")
        assert call is not None
        call.finish(200)
    services = sorted(
        dict(p.attributes)["destination_service"] for p in points(reader, "istio_requests_total")
    )
    assert services == ["h0.ns.mesh", "h1.ns.mesh", "unknown"]


class Exploding(TextMapPropagator):
    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Context:
        raise RuntimeError("broken propagator")

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        raise RuntimeError("broken propagator")

    @property
    def fields(self) -> set[str]:
        return set()


def test_hook_failures_are_contained_and_counted() -> None:
    _, provider = tracing()
    telemetry = Telemetry(TelemetryConfig(propagator=Exploding(), tracer_provider=provider))
    headers: dict[str, str] = {}
    call = telemetry.call("source", "http", "GET", "a.b.mesh:80", "/")
    assert call is not None
    call.routed("r", "c", False, "")
    call.attempt_start(1, "127.0.0.1", 1, headers.__setitem__)  # must not raise
    call.finish(200)
    server = telemetry.call("destination", "http", "GET", "a.b.mesh:80", "/")
    assert server is not None
    assert server.start_server_span({}.get) is None
    assert telemetry.errors == 2

    class BadCounter:
        def add(self, *a: Any) -> None:
            raise ValueError("exporter down")

    metered = Telemetry(TelemetryConfig(tracing=False))
    assert metered.metrics is not None
    metered.metrics.requests = BadCounter()  # type: ignore[assignment]
    call = metered.call("source", "http", "GET", "a.b.mesh:80", "/")
    assert call is not None
    call.finish(200)
    assert metered.errors == 1


def test_w3c_baggage_and_b3_propagation() -> None:
    exporter, provider = tracing()
    telemetry = Telemetry(TelemetryConfig(tracer_provider=provider, b3=True))
    headers: dict[str, str] = {}
    parent_ctx = baggage.set_baggage("tenant", "acme")
    call = telemetry.call("source", "http", "GET", "a.b.mesh:80", "/")
    assert call is not None
    token = otel_context.attach(parent_ctx)
    try:
        call.routed("r", "c", False, "")
        call.attempt_start(1, "127.0.0.1", 8080, headers.__setitem__)
    finally:
        otel_context.detach(token)
    call.finish(200)
    attempt = next(
        s for s in exporter.get_finished_spans() if s.attributes.get("network.peer.port")
    )
    ctx = attempt.get_span_context()
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert int(flags, 16) & 1  # sampled
    assert headers["baggage"] == "tenant=acme"
    assert headers["x-b3-traceid"] == f"{ctx.trace_id:032x}"
    assert headers["x-b3-spanid"] == f"{ctx.span_id:016x}"
    # The server side reads B3 when no traceparent came.
    server = telemetry.call("destination", "http", "GET", "a.b.mesh:80", "/")
    assert server is not None
    b3_only = {"b3": f"{ctx.trace_id:032x}-{ctx.span_id:016x}-1"}
    assert server.start_server_span(b3_only.get) is not None
    server.finish(200)
    span = exporter.get_finished_spans()[-1]
    assert span.kind == trace.SpanKind.SERVER
    assert span.parent is not None and span.parent.span_id == ctx.span_id


def test_b3_rejects_malformed_ids() -> None:
    propagator = B3Propagator()
    ctx = propagator.extract({"x-b3-traceid": "zz", "x-b3-spanid": "1" * 16})
    assert not trace.get_current_span(ctx).get_span_context().is_valid


def test_unsampled_traces_still_propagate_but_record_nothing() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(TelemetryConfig(tracer_provider=provider))
    headers: dict[str, str] = {}
    call = telemetry.call("source", "http", "GET", "a.b.mesh:80", "/")
    assert call is not None
    call.routed("r", "c", False, "")
    call.attempt_start(1, "127.0.0.1", 1, headers.__setitem__)
    call.finish(200)
    assert not int(headers["traceparent"].rsplit("-", 1)[1], 16) & 1  # not sampled
    assert exporter.get_finished_spans() == ()


def test_everything_off_means_no_call() -> None:
    telemetry = Telemetry(TelemetryConfig.off())
    assert not telemetry.enabled
    assert telemetry.call("source", "http", "GET", "a:1", "/") is None


@pytest.mark.parametrize("flags,text", [((), "-"), (("UF", "URX", "UF"), "UF,URX")])
def test_flag_text(flags: tuple[str, ...], text: str) -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(TelemetryConfig(meter_provider=MeterProvider(metric_readers=[reader])))
    call = telemetry.call("source", "http", "GET", "a.b.mesh:80", "/")
    assert call is not None
    call.finish(200, flags)
    (point,) = points(reader, "istio_requests_total")
    assert point.attributes["response_flags"] == text
