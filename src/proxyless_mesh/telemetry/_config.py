"""What the application turns on, and who this workload is.

`TelemetryConfig` is the one knob an application passes to `Mesh(...,
telemetry=...)` (or to the inbound middleware). The defaults follow Istio's
promise of instrumentation without code changes: metrics and traces are on
and go to the *global* OpenTelemetry providers, which are no-ops until the
application installs an SDK; access logs cost more and are off by default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import TracerProvider

    from proxyless_mesh.bootstrap import Bootstrap

UNKNOWN = "unknown"
#: The header a meshed caller names its workload in, and a meshed server
#: answers with its own (Istio's metadata exchange does the same with
#: x-envoy-peer-metadata), so both reporters can fill the peer's labels.
PEER_HEADER = "x-mesh-peer-workload"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """Which signals a Mesh (and the inbound middleware) produces.

    Args:
        metrics: Istio's standard request metrics through the OTel metrics API.
        tracing: client/server spans and trace-context propagation.
        access_log: one JSON line per request on `access_logger`.
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
    tracing: bool = True
    access_log: bool = False
    access_log_sampling: float = 1.0
    b3: bool = False
    meter_provider: MeterProvider | None = None
    tracer_provider: TracerProvider | None = None
    propagator: TextMapPropagator | None = None
    access_logger: str = "proxyless_mesh.access"
    max_label_sets: int = 2048

    @classmethod
    def off(cls) -> TelemetryConfig:
        """Nothing at all: the transports skip every hook."""
        return cls(metrics=False, tracing=False, access_log=False)

    @property
    def enabled(self) -> bool:
        return self.metrics or self.tracing or self.access_log


@dataclass(frozen=True, slots=True)
class Workload:
    """This process as Istio's labels name it."""

    name: str = UNKNOWN
    namespace: str = UNKNOWN
    principal: str = UNKNOWN  # its SPIFFE ID, reported only on mTLS connections

    @property
    def peer_value(self) -> str:
        """The value of PEER_HEADER this workload sends."""
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_bootstrap(cls, bootstrap: Bootstrap) -> Workload:
        """Istio's node metadata keys (NAMESPACE, WORKLOAD_NAME,
        SERVICE_ACCOUNT); without WORKLOAD_NAME, the node cluster, else the
        node id, names the workload."""
        meta: Mapping[str, Any] = bootstrap.node_metadata
        namespace = _str(meta.get("NAMESPACE")) or UNKNOWN
        name = _str(meta.get("WORKLOAD_NAME")) or bootstrap.node_cluster or bootstrap.node_id
        account = _str(meta.get("SERVICE_ACCOUNT"))
        trust = _str(bootstrap.proxyless_mesh.get("trust_domain")) or "cluster.local"
        principal = f"spiffe://{trust}/ns/{namespace}/sa/{account}" if account else UNKNOWN
        return cls(name or UNKNOWN, namespace, principal)


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def parse_peer(value: str | None) -> tuple[str, str] | None:
    """(workload, namespace) from a PEER_HEADER value, or None when absent or
    malformed (it comes from the network: only plain names are accepted)."""
    if not value or len(value) > 128:
        return None
    namespace, sep, name = value.partition("/")
    if not sep or not _NAME.match(namespace) or not _NAME.match(name):
        return None
    return name, namespace


def service_labels(host: str) -> tuple[str, str]:
    """(destination_service_name, destination_service_namespace) of a mesh
    host such as `reviews.shop.mesh` or `reviews.shop.svc.cluster.local`."""
    parts = host.split(".")
    if len(parts) >= 3:
        return parts[0], parts[1]
    return parts[0] or UNKNOWN, UNKNOWN
