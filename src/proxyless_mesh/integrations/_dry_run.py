"""Dry-run (shadow) policy results: span attributes, access-log fields, a counter.

Envoy's RBAC filter writes a shadow engine's verdict as dynamic metadata
(`istio_dry_run_allow_shadow_engine_result`, `..._shadow_effective_policy_id`)
and counts it (`<prefix>shadow_allowed` / `<prefix>shadow_denied`); Istio
users read them from access logs, traces and metrics. The inbound middlewares
call `record_dry_run` after the policy decision: the server span is current
there (TelemetryMiddleware wraps them), and the attributes use Envoy's key
names. The ASGI scope / WSGI environ carries the results out to the
telemetry middleware, which adds them to the request's access line and counts
them (`report_dry_run`). gRPC has no scope to carry them: the telemetry
interceptor names its call in a context variable around the inner handler
(`reporting_to`), and the authorization interceptor, which runs inside it in
the same thread or task, reports there. Nothing is done for a decision without
dry-run results.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, MutableMapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import Counter

from proxyless_mesh.policy import Decision, ShadowResult
from proxyless_mesh.telemetry import Call, Telemetry, metrics_meter

CARRIER_KEY = "proxyless_mesh.dry_run"
"""Where the results wait in the ASGI scope / WSGI environ for the telemetry middleware."""

RBAC_METADATA = "envoy.filters.http.rbac"


_GRPC_CALL: ContextVar[tuple[Telemetry, Call] | None] = ContextVar(
    "proxyless_mesh_dry_run_call", default=None
)


@contextlib.contextmanager
def reporting_to(telemetry: Telemetry, call: Call) -> Iterator[None]:
    """Dry-run results decided inside this block are reported on `call`."""
    token = _GRPC_CALL.set((telemetry, call))
    try:
        yield
    finally:
        _GRPC_CALL.reset(token)


def record_dry_run(decision: Decision, carrier: MutableMapping[str, Any] | None = None) -> None:
    if not decision.shadow:
        return
    if carrier is not None:
        carrier[CARRIER_KEY] = decision.shadow
    elif (current := _GRPC_CALL.get()) is not None:
        report_dry_run(*current, decision.shadow)
    span = trace.get_current_span()
    if not span.is_recording():
        return
    for result in decision.shadow:
        for key, value in result.metadata().items():
            span.set_attribute(key, value)


def report_dry_run(telemetry: Telemetry, call: Call, shadow: tuple[ShadowResult, ...]) -> None:
    """On the access line as Envoy's `%DYNAMIC_METADATA(envoy.filters.http.rbac:<key>)%`
    operators, and counted by prefix, result and policy."""
    counter = _counter(telemetry)
    for result in shadow:
        if counter is not None:
            counter.add(
                1,
                {
                    "shadow_rules_stat_prefix": result.prefix,
                    "result": result.engine_result,
                    "shadow_effective_policy_id": result.effective_policy_id,
                },
            )
        if call.logged:
            extra = dict(call.log_extra or {})
            for key, value in result.metadata().items():
                extra[f"DYNAMIC_METADATA({RBAC_METADATA}:{key})"] = value
            call.log_extra = extra


@functools.lru_cache(maxsize=8)
def _counter(telemetry: Telemetry) -> Counter | None:
    meter = metrics_meter(telemetry.config)
    if meter is None:
        return None
    return meter.create_counter(
        "envoy_rbac_shadow_results",
        description="Dry-run AuthorizationPolicy verdicts (Envoy's <prefix>shadow_allowed"
        "/shadow_denied), by prefix, result and the policy that matched",
    )
