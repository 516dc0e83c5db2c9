"""`Telemetry`: the signals of one process side (one per Mesh or per inbound
stack), and the trace context propagation; it makes the `Call` of each
request (_call.py).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter

from proxyless_mesh.telemetry._access_log import AccessLog
from proxyless_mesh.telemetry._b3 import B3Propagator
from proxyless_mesh.telemetry._config import ProviderGate, TelemetryConfig, service_labels
from proxyless_mesh.telemetry._istio_tags import workload_tags
from proxyless_mesh.telemetry._labels import (
    Peer,
    Workload,
    grpc_headers,
    label_prefix,
)
from proxyless_mesh.telemetry._metrics import IstioMetrics
from proxyless_mesh.telemetry._policy import NO_POLICY, TelemetryPolicy
from proxyless_mesh.telemetry._stats import IstioStats

if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import TextMapPropagator

    from proxyless_mesh.bootstrap import Bootstrap

from proxyless_mesh.telemetry._call import Call, GetHeader, QuietCall, SetHeader


class _Setter(Setter[SetHeader]):
    """OTel Setter over a `set_header(name, value)` callable."""

    def set(self, carrier: SetHeader, key: str, value: str) -> None:
        carrier(key, value)


class _Getter(Getter[GetHeader]):
    """OTel Getter over a `get_header(name)` callable."""

    def get(self, carrier: GetHeader, key: str) -> list[str] | None:
        value = carrier(key)
        return [value] if value is not None else None

    def keys(self, carrier: GetHeader) -> list[str]:
        return []


_SETTER = _Setter()
_GETTER = _Getter()


class Telemetry:
    """The signals of one process side: built from a TelemetryConfig and
    the workload's identity (`Telemetry.from_bootstrap`)."""

    def __init__(self, config: TelemetryConfig | None = None, workload: Workload | None = None):
        config = config if config is not None else TelemetryConfig()
        self.config = config
        self.workload = workload if workload is not None else Workload()
        self.enabled = config.enabled
        #: Hook failures swallowed so far (telemetry never fails a request).
        self.errors = 0
        #: Istio's request metrics, natively (always, unless metrics are off).
        self.stats = IstioStats(config.max_label_sets) if config.metrics else None
        #: The same through the OpenTelemetry API (`otel_metrics`).
        self.metrics: IstioMetrics | None = None
        meter_provider = None
        if config.metrics and config.otel_metrics:
            meter_provider = config.meter_provider or metrics.get_meter_provider()
            self.metrics = IstioMetrics(
                meter_provider.get_meter("proxyless_mesh"), max_label_sets=config.max_label_sets
            )
        self.tracer: trace.Tracer | None = None
        if config.tracing:
            tracer_provider = config.tracer_provider or trace.get_tracer_provider()
            self.tracer = tracer_provider.get_tracer("proxyless_mesh")
        #: Whether those providers record yet (the no-SDK fast path).
        self.gate = ProviderGate(self.tracer, meter_provider)
        self._b3 = B3Propagator() if config.b3 else None
        self.access = (
            AccessLog(config.access_logger, config.access_log_format, config.access_log_stdout)
            if config.access_log
            else None
        )
        #: Send/answer PEER_HEADER: only the peer-labelled signals need it.
        self.exchange_peers = self.stats is not None or self.access is not None
        self._sampling = config.access_log_sampling
        self._rng = random.Random()
        self._hosts: dict[str, tuple[str, str, str]] = {}
        #: The Istio exchange headers this workload sends and answers with.
        self.peer_headers = self.workload.peer_headers
        self.grpc_peer_headers = grpc_headers(self.peer_headers)
        #: Istio's per-proxy span tags (component, node_id, istio.*), once.
        self.span_tags = workload_tags(self.workload)
        self._prefixes: dict[tuple[str, Peer, str, bool, str], tuple[str, ...]] = {}
        self._quiet = QuietCall(self)
        #: The Telemetry API's policy for this workload (from the control
        #: plane, see `apply_policy`); replaced whole. Its access-log choice
        #: per side is resolved when it is set, not per call.
        self.policy = NO_POLICY

    @property
    def policy(self) -> TelemetryPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: TelemetryPolicy) -> None:
        default = self.config.access_log
        source, destination = policy.source.access_log, policy.destination.access_log
        self._log_source = default if source is None else source
        self._log_destination = default if destination is None else destination
        self._policy = policy

    def apply_policy(self, policy: TelemetryPolicy) -> None:
        """Follow a Telemetry API policy from now on (next calls). It may turn
        access logs on, but not a Telemetry the application turned off."""
        if (
            self.access is None
            and self.enabled
            and (policy.source.access_log or policy.destination.access_log)
        ):
            config = self.config
            self.access = AccessLog(
                config.access_logger, config.access_log_format, config.access_log_stdout
            )
            self.exchange_peers = True
        self.policy = policy

    def traced(self, reporter: str, context: Context | None) -> bool:
        """Would the policy have this call's spans made? Sampling decides new
        traces only: a caller's propagated decision is followed."""
        side = self.policy.side(reporter)
        if not side.report_spans:
            return False
        if side.sampling is None:
            return True
        parent = trace.get_current_span(context).get_span_context()
        if parent.is_valid:
            return bool(parent.trace_flags.sampled)
        return self._rng.random() * 100.0 < side.sampling

    @classmethod
    def from_bootstrap(
        cls, bootstrap: Bootstrap, config: TelemetryConfig | None = None
    ) -> Telemetry:
        return cls(config, Workload.from_bootstrap(bootstrap))

    # -- propagation --------------------------------------------------------

    def _propagator(self) -> TextMapPropagator:
        # Read per use so an application that sets its propagator after the
        # mesh started is still honoured.
        return self.config.propagator or propagate.get_global_textmap()

    def inject(self, context: Context, set_header: SetHeader) -> None:
        self._propagator().inject(set_header, context, _SETTER)
        if self._b3 is not None:
            self._b3.inject(set_header, context, _SETTER)

    def extract(self, get_header: GetHeader) -> Context:
        context = self._propagator().extract(get_header, None, _GETTER)
        if self._b3 is not None and not trace.get_current_span(context).get_span_context().is_valid:
            context = self._b3.extract(get_header, context, _GETTER)
        return context

    # -- calls ----------------------------------------------------------------

    def host_labels(self, authority: str) -> tuple[str, str, str]:
        """(service host, name, namespace) of an authority, cached."""
        labels = self._hosts.get(authority)
        if labels is None:
            host = authority.rpartition(":")[0] if ":" in authority else authority
            name, namespace = service_labels(host)
            labels = (host, name, namespace)
            if len(self._hosts) < self.config.max_label_sets:
                self._hosts[authority] = labels
        return labels

    def labels(
        self, reporter: str, peer: Peer, authority: str, secure: bool, principal: str
    ) -> tuple[str, ...]:
        """The per-(peer, service) part of a request's labels, cached."""
        key = (reporter, peer, authority, secure, principal)
        prefix = self._prefixes.get(key)
        if prefix is None:
            service = self.host_labels(authority)
            prefix = label_prefix(reporter, self.workload, peer, service, secure, principal)
            if len(self._prefixes) < self.config.max_label_sets:
                self._prefixes[key] = prefix
        return prefix

    def call(
        self, reporter: str, protocol: str, method: str, authority: str, path: str
    ) -> Call | None:
        """A Call for one request, or None when every signal is off."""
        if not self.enabled:
            return None
        logged, measured = self._signals(
            self._log_source if reporter == "source" else self._log_destination
        )
        return Call(self, reporter, protocol, method, authority, path, logged, measured)

    def client_call(self, method: str, authority: str, path: str) -> Call | QuietCall | None:
        """An outbound HTTP request's Call; the shared QuietCall when nothing
        would be recorded (no access line, metrics off, no span of ours),
        which only propagates; None when all is off."""
        if not self.enabled:
            return None
        logged, measured = self._signals(self._log_source)
        if not logged and not measured and (self.tracer is None or not self.gate.tracing()):
            return self._quiet
        return Call(self, "source", "http", method, authority, path, logged, measured)

    def _signals(self, log_wanted: bool) -> tuple[bool, bool]:
        """(access line, metrics) for one call, given whether the policy (or
        the config) wants this side's access line. The metrics are kept
        natively whenever they are on; whether an OpenTelemetry SDK records
        them too is asked when the call ends (`otel_measured`)."""
        logged = (
            log_wanted
            and self.access is not None
            and (self._sampling >= 1.0 or self._rng.random() < self._sampling)
        )
        return logged, self.stats is not None

    def otel_measured(self) -> bool:
        """Is a request's OpenTelemetry record worth making now (an SDK records it)?"""
        istio = self.metrics
        return istio is not None and istio.wanted(self.gate.metrics())

    def prometheus_text(self) -> str:
        """Istio's request metrics kept so far (both reporters of the calls
        this Telemetry saw), `istio_build` and the mesh clusters'
        circuit-breaker numbers, in the Prometheus text format (0.0.4): what
        a scrape of `/stats/prometheus` returns. Empty with metrics off."""
        return self.stats.prometheus_text() if self.stats is not None else ""
