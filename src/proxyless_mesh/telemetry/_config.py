"""What the application turns on, and who this workload is.

`TelemetryConfig` is the one knob an application passes to `Mesh(...,
telemetry=...)` (or to the inbound middleware). The defaults follow Istio's
promise of instrumentation without code changes: Istio's request metrics are
kept natively and always, as a sidecar keeps its stats (read on a scrape);
they and the traces also go to the *global* OpenTelemetry providers, which
are no-ops until the application installs an SDK; access logs cost more and
are off by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import trace as _trace_api
from opentelemetry.metrics import NoOpMeterProvider, get_meter_provider
from opentelemetry.metrics import _internal as _metrics_api
from opentelemetry.trace import (
    NoOpTracer,
    NoOpTracerProvider,
    ProxyTracer,
    ProxyTracerProvider,
    get_tracer_provider,
)

from proxyless_mesh.telemetry._istio_access_log import FORMATS
from proxyless_mesh.telemetry._labels import UNKNOWN

try:
    from opentelemetry.metrics._internal import _ProxyMeterProvider as _ProxyMeters
except ImportError:  # pragma: no cover - a future API that moved its private class
    _ProxyMeters = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Tracer, TracerProvider


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """Which signals a Mesh (and the inbound middleware) produces.

    Args:
        metrics: Istio's standard request metrics, kept natively (read with
            `Telemetry.prometheus_text()` or the mesh admin endpoint's
            `/stats/prometheus`, as Prometheus scrapes a sidecar).
        otel_metrics: also record them through the OTel metrics API (they
            reach an exporter once the application installs an SDK). Turn
            it off when Prometheus scrapes `/stats/prometheus` and the SDK
            exports to the same Prometheus: each request would be counted
            in both.
        tracing: client/server spans and trace-context propagation.
        access_log: one line per request on `access_logger`.
        access_log_format: "text" (Envoy's default format, as Istio's
            proxies write it) or "json" (Istio's JSON keys).
        access_log_stdout: write lines to standard output instead of the logger.
        access_log_sampling: share of requests logged (0..1) when on.
        b3: also inject/extract Zipkin B3 headers beside the propagator's.
        meter_provider / tracer_provider: None means the global provider.
        propagator: None means the global text-map propagator (W3C
            traceparent/tracestate + baggage unless the app changed it).
        access_logger: the `logging` logger name for access lines.
        max_label_sets: bound on distinct metric label sets; past it, the
            peer-supplied labels collapse to "unknown" (cardinality guard).
    """

    metrics: bool = True
    otel_metrics: bool = True
    tracing: bool = True
    access_log: bool = False
    access_log_sampling: float = 1.0
    access_log_format: str = "text"
    access_log_stdout: bool = False
    b3: bool = False
    meter_provider: MeterProvider | None = None
    tracer_provider: TracerProvider | None = None
    propagator: TextMapPropagator | None = None
    access_logger: str = "proxyless_mesh.access"
    max_label_sets: int = 2048

    def __post_init__(self) -> None:
        if self.access_log_format not in FORMATS:
            raise ValueError(
                f"TelemetryConfig.access_log_format: {self.access_log_format!r} "
                f"is not one of {FORMATS}"
            )

    @classmethod
    def off(cls) -> TelemetryConfig:
        """Nothing at all: the transports skip every hook."""
        return cls(metrics=False, tracing=False, access_log=False)

    @property
    def enabled(self) -> bool:
        return self.metrics or self.tracing or self.access_log


def service_labels(host: str) -> tuple[str, str]:
    """(destination_service_name, destination_service_namespace) of a mesh
    host such as `reviews.shop.mesh` or `reviews.shop.svc.cluster.local`."""
    parts = host.split(".")
    if len(parts) >= 3:
        return parts[0], parts[1]
    return parts[0] or UNKNOWN, UNKNOWN


class ProviderGate:
    """Whether the OpenTelemetry providers a Telemetry uses record anything.

    By default the mesh uses the *global* providers, which are the API's
    proxies until the application installs an SDK: then every span is a
    non-recording stand-in and every metric call a no-op, yet building them
    costs microseconds per request. The gate lets the hot path skip that
    work while nothing records, and still starts recording when the
    application sets a real global provider later (the proxies' promise).
    A proxy is "pending": the global is looked at on every request until a
    real provider appears; the API lets the global be set only once, so the
    first real answer is kept.
    """

    __slots__ = ("_metrics", "_tracing")

    def __init__(self, tracer: Tracer | None, meter_provider: MeterProvider | None) -> None:
        # None: pending (a proxy); True/False: decided for good.
        self._tracing: bool | None = False
        if tracer is not None and not isinstance(tracer, NoOpTracer):
            self._tracing = None if isinstance(tracer, ProxyTracer) else True
        self._metrics: bool | None = False
        if meter_provider is not None:
            self._metrics = _meter_state(meter_provider)

    def tracing(self) -> bool:
        """Would a span started now record (or reach a real tracer)?"""
        state = self._tracing
        if state is None:
            provider = _global_tracer_provider()
            if provider is None:
                return False
            state = self._tracing = not isinstance(provider, NoOpTracerProvider)
        return state

    def metrics(self) -> bool:
        """Would a metric recorded now reach a real meter?"""
        state = self._metrics
        if state is None:
            provider = _global_meter_provider()
            if provider is None:
                return False
            state = self._metrics = not isinstance(provider, NoOpMeterProvider)
        return state


# The set global providers, None while unset. The public getters cost ~1 µs
# each (they consult os.environ on every call); the API's own proxies read
# these module globals instead, and so does the gate, falling back to the
# getters if a future API renames them.
if hasattr(_trace_api, "_TRACER_PROVIDER"):

    def _global_tracer_provider() -> TracerProvider | None:
        return _trace_api._TRACER_PROVIDER

else:  # pragma: no cover - depends on the API's internals

    def _global_tracer_provider() -> TracerProvider | None:
        provider = get_tracer_provider()
        return None if isinstance(provider, ProxyTracerProvider) else provider


if hasattr(_metrics_api, "_METER_PROVIDER"):

    def _global_meter_provider() -> MeterProvider | None:
        return _metrics_api._METER_PROVIDER

else:  # pragma: no cover - depends on the API's internals

    def _global_meter_provider() -> MeterProvider | None:
        provider = get_meter_provider()
        return None if _meter_state(provider) is None else provider


def _meter_state(provider: MeterProvider) -> bool | None:
    """True: a real meter provider; False: the no-op one; None: the API's
    proxy (pending). The proxy's class is private to the API: if a future
    API moves it, every provider counts as real (slower, never wrong)."""
    if isinstance(provider, NoOpMeterProvider):
        return False
    if _ProxyMeters is None:  # pragma: no cover - depends on the API's internals
        return True
    return None if isinstance(provider, _ProxyMeters) else True
