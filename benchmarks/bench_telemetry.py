"""Per-request cost of telemetry on the sync httpx mesh transport.

    python benchmarks/bench_telemetry.py [--quick]

A real control plane serves the route; the mesh transport's inner transport
is httpx.MockTransport, so no socket is involved and the figures are the
CPU cost of the mesh path itself (routing, the resilience engine, and
telemetry). Each variant swaps `mesh.telemetry` and runs the same loop;
rounds alternate between variants so drift hits all of them alike, and the
median round is reported.
"""

from __future__ import annotations

import io
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from meshlab import LocalMesh, service_entry
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

from proxyless_mesh import Mesh
from proxyless_mesh.telemetry import Telemetry, TelemetryConfig

HOST = "bench.default.mesh"
URL = f"http://{HOST}:8080/item"


class _Discard(SpanExporter):
    """Spans go nowhere: the cost measured is ours and the SDK's, not an exporter's."""

    def export(self, spans: Sequence[object]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _tracer(sampled: bool) -> TracerProvider:
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON if sampled else ALWAYS_OFF))
    provider.add_span_processor(BatchSpanProcessor(_Discard()))
    return provider


def _variants() -> dict[str, TelemetryConfig]:
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return {
        "telemetry off": TelemetryConfig.off(),
        "defaults, no SDK (native stats, no-op API)": TelemetryConfig(),
        "native stats only (otel_metrics=False, no tracing)": TelemetryConfig(
            otel_metrics=False, tracing=False
        ),
        "metrics on (SDK, and native)": TelemetryConfig(meter_provider=meter, tracing=False),
        "tracing sampled 0 %": TelemetryConfig(metrics=False, tracer_provider=_tracer(False)),
        "tracing sampled 100 %": TelemetryConfig(metrics=False, tracer_provider=_tracer(True)),
        "access logs on": TelemetryConfig(metrics=False, tracing=False, access_log=True),
        "all on (metrics, 100 % traces, logs)": TelemetryConfig(
            meter_provider=meter, tracer_provider=_tracer(True), access_log=True
        ),
    }


def _loop(client: httpx.Client, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        client.get(URL)
    return (time.perf_counter() - start) / n * 1e6


def measure(quick: bool) -> list[tuple[str, float]]:
    """(variant, median microseconds per request)."""
    n, rounds = (300, 3) if quick else (5000, 7)
    log = logging.getLogger("proxyless_mesh.access")
    handler = logging.StreamHandler(io.StringIO())  # formatted and written, in memory
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    with tempfile.TemporaryDirectory() as tmp:
        lab = LocalMesh(Path(tmp))
        try:
            lab.write_config("svc.yaml", service_entry(HOST, 8080, [("127.0.0.1", 9, {})]))
            lab.start_control_plane()
            with Mesh.from_bootstrap(lab.bootstrap("bench"), preload=[f"{HOST}:8080"]) as mesh:
                inner = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))
                client = httpx.Client(transport=mesh.httpx_transport(inner))
                variants = {
                    name: Telemetry.from_bootstrap(mesh.bootstrap, config)
                    for name, config in _variants().items()
                }
                timings: dict[str, list[float]] = {name: [] for name in variants}
                for telemetry in variants.values():  # warm-up
                    mesh.telemetry = telemetry
                    _loop(client, 200)
                for _ in range(rounds):
                    for name, telemetry in variants.items():
                        mesh.telemetry = telemetry
                        timings[name].append(_loop(client, n))
                client.close()
        finally:
            lab.close()
            log.removeHandler(handler)
    return [(name, statistics.median(values)) for name, values in timings.items()]


def table(results: Sequence[tuple[str, float]]) -> str:
    base = results[0][1]
    lines = [
        "| variant (sync mesh transport, in-memory upstream) | µs / request | added vs off |",
        "|---|---:|---:|",
    ]
    for name, us in results:
        lines.append(f"| {name} | {us:.1f} | {us - base:+.1f} µs |")
    return "\n".join(lines)


def run(quick: bool = False) -> str:
    """The markdown table (the `make bench` runner calls this)."""
    return "### Telemetry overhead per request\n\n" + table(measure(quick))


def main(argv: Callable[[], list[str]] = lambda: sys.argv[1:]) -> None:
    print(run(quick="--quick" in argv()))


if __name__ == "__main__":
    main()
