"""Dry-run results reach the server span under Envoy's metadata names, through
the ASGI authorization middleware; the request is served as if the policy did
not exist."""

from __future__ import annotations

import asyncio
from typing import Any

from mesh_control_plane.config.authorization import authorization_policies_to_rbac
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxyless_mesh.integrations import AuthorizationMiddleware
from proxyless_mesh.policy import PolicySet

DRY_RUN_DENY = {
    "metadata": {
        "name": "deny-everyone",
        "namespace": "web",
        "annotations": {"istio.io/dry-run": "true"},
    },
    "spec": {"action": "DENY", "rules": [{}]},
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
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [(b"host", b"web")],
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 5000),
    }
    with provider.get_tracer("test").start_as_current_span("inbound"):
        asyncio.run(middleware(scope, receive, send))
    assert sent[0]["status"] == 200  # a dry-run DENY never denies
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {
        "istio_dry_run_deny_shadow_engine_result": "denied",
        "istio_dry_run_deny_shadow_effective_policy_id": "ns[web]-policy[deny-everyone]-rule[0]",
    }
