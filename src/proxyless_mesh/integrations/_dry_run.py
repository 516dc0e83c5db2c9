"""Dry-run (shadow) policy results on the request's server span.

Envoy's RBAC filter writes a shadow engine's verdict as dynamic metadata
(`istio_dry_run_allow_shadow_engine_result`, `..._shadow_effective_policy_id`);
Istio users read them from access logs and traces. The inbound middlewares call
`record_dry_run` after the policy decision: the server span is current there
(TelemetryMiddleware wraps them), and the attributes use Envoy's key names.
Nothing is done for a decision without dry-run results.
"""

from __future__ import annotations

from opentelemetry import trace

from proxyless_mesh.policy import Decision


def record_dry_run(decision: Decision) -> None:
    if not decision.shadow:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    for result in decision.shadow:
        for key, value in result.metadata().items():
            span.set_attribute(key, value)
