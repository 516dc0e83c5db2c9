"""The no-SDK fast path: while no OpenTelemetry provider records, a call
opens no spans and makes no OpenTelemetry measurement (Istio's request
metrics are still kept natively, as a sidecar keeps its stats), yet still
propagates the caller's trace context, and it starts recording through
OpenTelemetry once the application sets real global providers (the API
proxies' late binding)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from proxyless_mesh.telemetry import Call, QuietCall, Telemetry, TelemetryConfig, Workload

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
NOOP = trace.NoOpTracerProvider()


@pytest.fixture
def incoming() -> Iterator[None]:
    """The application runs inside a (remote, sampled) caller's span."""
    span = NonRecordingSpan(
        SpanContext(TRACE_ID, SPAN_ID, is_remote=True, trace_flags=TraceFlags(1))
    )
    ctx = baggage.set_baggage("tenant", "blue", trace.set_span_in_context(span))
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def outbound(telemetry: Telemetry, entry: str = "call") -> dict[str, str]:
    """One request's hooks; `entry` "client_call" is the httpx transports'
    way in, which hands out the shared QuietCall while nothing records."""
    headers: dict[str, str] = {}
    if entry == "client_call":
        call: Call | QuietCall | None = telemetry.client_call("GET", "reviews.shop.mesh:9080", "/r")
    else:
        call = telemetry.call("source", "http", "GET", "reviews.shop.mesh:9080", "/r")
    assert call is not None
    call.routed("route", "outbound|9080||reviews.shop.mesh", False, "")
    call.attempt_start(1, "10.0.0.1", 9080, headers.__setitem__)
    call.attempt_end(200, None)
    call.finish(200)
    assert getattr(call, "span", None) is None  # no span of ours was opened
    return headers


@pytest.mark.parametrize("entry", ["call", "client_call"])
def test_quiet_call_still_propagates_the_callers_context(incoming: None, entry: str) -> None:
    headers = outbound(Telemetry(TelemetryConfig(tracer_provider=NOOP, b3=True)), entry)
    assert headers["traceparent"] == f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"
    assert headers["baggage"] == "tenant=blue"
    assert headers["x-b3-traceid"] == f"{TRACE_ID:032x}"
    assert headers["x-b3-spanid"] == f"{SPAN_ID:016x}"
    assert headers["x-b3-sampled"] == "1"


@pytest.mark.parametrize("entry", ["call", "client_call"])
def test_quiet_call_without_context_sends_only_the_peer_header(entry: str) -> None:
    headers = outbound(Telemetry(TelemetryConfig(tracer_provider=NOOP, b3=True)), entry)
    assert set(headers) == {"x-envoy-peer-metadata", "x-envoy-peer-metadata-id"}


def test_tracing_off_propagates_nothing_on_either_way_in(incoming: None) -> None:
    config = TelemetryConfig(tracing=False, meter_provider=NoOpMeterProvider())
    exchange = dict(Workload().peer_headers)  # Istio's metadata exchange, nothing else
    assert outbound(Telemetry(config), "call") == exchange
    assert outbound(Telemetry(config), "client_call") == exchange


def test_client_call_is_shared_and_quiet_only_while_nothing_records() -> None:
    quiet = Telemetry(TelemetryConfig(tracer_provider=NOOP, metrics=False))
    first = quiet.client_call("GET", "reviews.shop.mesh:9080", "/r")
    assert isinstance(first, QuietCall)
    assert quiet.client_call("GET", "ratings.shop.mesh:9080", "/") is first  # no per-request state

    # Without an SDK the request metrics are still kept (natively): a Call.
    no_sdk = Telemetry(TelemetryConfig(tracer_provider=NOOP, meter_provider=NoOpMeterProvider()))
    assert isinstance(no_sdk.client_call("GET", "reviews.shop.mesh:9080", "/r"), Call)

    logged = Telemetry(TelemetryConfig(tracer_provider=NOOP, access_log=True))
    assert isinstance(logged.client_call("GET", "reviews.shop.mesh:9080", "/r"), Call)

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    measured = Telemetry(TelemetryConfig(tracer_provider=NOOP, meter_provider=MeterProvider()))
    assert isinstance(measured.client_call("GET", "reviews.shop.mesh:9080", "/r"), Call)
    traced = Telemetry(TelemetryConfig(tracer_provider=TracerProvider(), metrics=False))
    assert isinstance(traced.client_call("GET", "reviews.shop.mesh:9080", "/r"), Call)
    off = TelemetryConfig(metrics=False, tracing=False, access_log=False)
    assert Telemetry(off).client_call("GET", "a:1", "/") is None


def test_quiet_server_span_runs_the_app_in_the_callers_context() -> None:
    telemetry = Telemetry(TelemetryConfig(tracer_provider=NOOP))
    call = telemetry.call("destination", "http", "GET", "reviews.shop.mesh", "/r")
    assert call is not None
    headers = {"traceparent": f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"}
    ctx = call.start_server_span(headers.get)
    assert ctx is not None
    assert trace.get_current_span(ctx).get_span_context().trace_id == TRACE_ID
    assert call.span is None


def test_quiet_access_line_and_the_callers_trace(
    incoming: None, caplog: pytest.LogCaptureFixture
) -> None:
    telemetry = Telemetry(TelemetryConfig(tracer_provider=NOOP, access_log=True))
    with caplog.at_level(logging.INFO, logger="proxyless_mesh.access"):
        headers: dict[str, str] = {}
        call = telemetry.call("source", "http", "GET", "reviews.shop.mesh:9080", "/r")
        assert call is not None
        call.routed("route", "c", False, "")
        call.attempt_start(1, "10.0.0.1", 9080, headers.__setitem__)
        call.finish(200)
    (line,) = [r.getMessage() for r in caplog.records]
    # Istio's line names the request by the x-request-id it sent upstream.
    assert f'"{headers["x-request-id"]}" "reviews.shop.mesh:9080" "10.0.0.1:9080" c' in line
    assert headers["traceparent"].startswith(f"00-{TRACE_ID:032x}-")


def test_noop_meter_provider_records_nothing() -> None:
    telemetry = Telemetry(TelemetryConfig(meter_provider=NoOpMeterProvider(), tracing=False))
    assert telemetry.metrics is not None
    assert not telemetry.metrics.wanted(telemetry.gate.metrics())
    recorded: list[object] = []
    telemetry.metrics.record = lambda *a: recorded.append(a)  # type: ignore[method-assign]
    outbound(telemetry)
    assert recorded == []
    assert 'istio_requests_total{reporter="source"' in telemetry.prometheus_text()


# The global providers can be set once per process: the late-binding check
# runs in a fresh interpreter so no other test's globals leak in or out.
LATE_BINDING = textwrap.dedent(
    """
    import json
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from proxyless_mesh.telemetry import Telemetry, TelemetryConfig

    telemetry = Telemetry(TelemetryConfig())  # the global proxies, no SDK yet

    def request(quiet_allowed=False):
        headers = {}
        if quiet_allowed:
            call = telemetry.client_call("GET", "reviews.shop.mesh:9080", "/r")
        else:
            call = telemetry.call("source", "http", "GET", "reviews.shop.mesh:9080", "/r")
        call.routed("route", "outbound|9080||reviews.shop.mesh", False, "")
        call.attempt_start(1, "10.0.0.1", 9080, headers.__setitem__)
        call.attempt_end(200, None)
        call.finish(200)
        return sorted(headers), getattr(call, "span", None) is not None

    before = request()
    before_quiet = request(quiet_allowed=True)
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    after = request()
    after_quiet = request(quiet_allowed=True)
    data = reader.get_metrics_data()
    counted = [
        p.value
        for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        if m.name == "istio_requests_total" for p in m.data.data_points
    ]
    native = sum(
        int(line.rpartition(" ")[2])
        for line in telemetry.prometheus_text().splitlines()
        if line.startswith("istio_requests_total{")
    )
    print(json.dumps({
        "before": before, "after": after, "counted": counted, "native": native,
        "before_quiet": before_quiet, "after_quiet": after_quiet,
        "spans": sorted(s.name for s in exporter.get_finished_spans()),
    }))
    """
)


def test_fast_path_starts_recording_once_a_real_provider_is_set() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LATE_BINDING], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    exchange = ["x-envoy-peer-metadata", "x-envoy-peer-metadata-id"]
    assert result["before"] == [exchange, False]
    assert result["after"] == [["traceparent", *exchange], True]
    assert result["before_quiet"] == result["before"]
    assert result["after_quiet"] == result["after"]
    # The two requests made after the SDK was set, one per way in.
    assert result["spans"] == ["reviews.shop.mesh:9080/*"] * 4
    assert result["counted"] == [2]  # the requests before the SDK were not counted
    assert result["native"] == 4  # natively, every request was


def test_idle_call_leaves_the_response_body_alone() -> None:
    """With nothing to record (metrics off, no access log) the body is not
    wrapped for byte counting; with the metrics on it is, SDK or not."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from proxyless_mesh.integrations import _httpx_telemetry as hooks

    def answer(telemetry: Telemetry) -> tuple[bool, httpx.Response]:
        request = httpx.Request("GET", "http://reviews.shop.mesh:9080/r")
        call = hooks.client_call(telemetry, request, "reviews.shop.mesh:9080")
        assert call is not None
        hooks.routed(call, "route", "outbound|9080||reviews.shop.mesh", None)
        call.attempt_start(1, "10.0.0.1", 9080, request.headers.__setitem__)
        response = httpx.Response(200, stream=httpx.ByteStream(b"body"))
        stream = response.stream
        out = hooks.responded(call, response)
        return out.stream is stream, out

    quiet = Telemetry(TelemetryConfig(tracer_provider=NOOP, metrics=False))
    unwrapped, _ = answer(quiet)
    assert unwrapped

    no_sdk = Telemetry(TelemetryConfig(tracer_provider=NOOP, meter_provider=NoOpMeterProvider()))
    unwrapped, response = answer(no_sdk)
    assert not unwrapped
    response.read()
    response.close()
    assert "istio_response_bytes_sum{" in no_sdk.prometheus_text()

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader])
    unwrapped, response = answer(Telemetry(TelemetryConfig(meter_provider=meter, tracing=False)))
    assert not unwrapped
    response.read()
    response.close()
    data = reader.get_metrics_data()
    assert data is not None
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert "istio_response_bytes" in names
