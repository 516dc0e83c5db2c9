"""Dry-run results reach the server span under Envoy's metadata names, through
the ASGI authorization middleware; the request is served as if the policy did
not exist."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from mesh_control_plane.config.authorization import authorization_policies_to_rbac
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxyless_mesh.integrations import AuthorizationMiddleware, TelemetryMiddleware
from proxyless_mesh.policy import PolicySet
from proxyless_mesh.telemetry import Telemetry, TelemetryConfig, Workload

DRY_RUN_DENY = {
    "metadata": {
        "name": "deny-everyone",
        "namespace": "web",
        "annotations": {"istio.io/dry-run": "true"},
    },
    "spec": {"action": "DENY", "rules": [{}]},
}


SCOPE = {
    "type": "http",
    "method": "GET",
    "path": "/",
    "raw_path": b"/",
    "query_string": b"",
    "headers": [(b"host", b"web")],
    "server": ("127.0.0.1", 8080),
    "client": ("127.0.0.1", 5000),
}


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_dry_run_deny_is_served_and_recorded_on_the_span() -> None:
    policies = PolicySet(authorization_policies_to_rbac([DRY_RUN_DENY]))
    middleware = AuthorizationMiddleware(_app, policies=lambda: policies)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("test").start_as_current_span("inbound"):
        sent = _served(middleware, dict(SCOPE))
    assert sent[0]["status"] == 200  # a dry-run DENY never denies
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {
        "istio_dry_run_deny_shadow_engine_result": "denied",
        "istio_dry_run_deny_shadow_effective_policy_id": "ns[web]-policy[deny-everyone]-rule[0]",
    }


def _served(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    asyncio.run(app(scope, receive, send))
    return sent


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_dry_run_results_on_the_access_line_and_counted(
    log_format: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As Envoy's RBAC metadata in Istio's access log and its shadow counters:
    the line of a request a dry-run policy saw names the verdict and the policy;
    other lines are unchanged."""
    reader = InMemoryMetricReader()
    config = TelemetryConfig(
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracing=False,
        access_log=True,
        access_log_format=log_format,
    )
    telemetry = Telemetry(config, Workload("web", "web", "spiffe://cluster.local/ns/web/sa/web"))
    dry = PolicySet(authorization_policies_to_rbac([DRY_RUN_DENY]))
    app = TelemetryMiddleware(
        AuthorizationMiddleware(_app, policies=lambda: dry), telemetry=telemetry
    )
    plain = TelemetryMiddleware(_app, telemetry=telemetry)
    caplog.set_level("INFO", logger="proxyless_mesh.access")
    assert _served(app, dict(SCOPE))[0]["status"] == 200
    assert _served(plain, dict(SCOPE))[0]["status"] == 200
    seen, unseen = [r.getMessage() for r in caplog.records if r.name == "proxyless_mesh.access"]
    policy = "ns[web]-policy[deny-everyone]-rule[0]"
    if log_format == "json":
        line = json.loads(seen)
        assert line["istio_dry_run_deny_shadow_engine_result"] == "denied"
        assert line["istio_dry_run_deny_shadow_effective_policy_id"] == policy
        assert not any(key.startswith("istio_dry_run") for key in json.loads(unseen))
    else:
        assert seen.endswith(
            " istio_dry_run_deny_shadow_engine_result=denied"
            f" istio_dry_run_deny_shadow_effective_policy_id={policy}"
        )
        assert "istio_dry_run" not in unseen
    assert shadow_points(reader) == [
        (
            {
                "shadow_rules_stat_prefix": "istio_dry_run_deny_",
                "result": "denied",
                "shadow_effective_policy_id": policy,
            },
            1,
        )
    ]


def shadow_points(reader: InMemoryMetricReader) -> list[tuple[dict[str, Any], int]]:
    """The envoy_rbac_shadow_results points: (attributes, count)."""
    return [
        (dict(p.attributes or {}), p.value)
        for rm in reader.get_metrics_data().resource_metrics  # type: ignore[union-attr]
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "envoy_rbac_shadow_results"
        for p in m.data.data_points  # type: ignore[union-attr]
    ]
