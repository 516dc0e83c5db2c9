"""Dry-run results of gRPC servers: on the RPC's access line and counted in
`envoy_rbac_shadow_results`, as for ASGI/WSGI (real grpc servers on port 0,
sync and aio, the telemetry interceptor first), and the RPC is served."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest
from mesh_control_plane.config.authorization import authorization_policies_to_rbac
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from proxyless_mesh.integrations import (
    AioAuthorizationServerInterceptor,
    AioTelemetryServerInterceptor,
    AuthorizationServerInterceptor,
    TelemetryServerInterceptor,
)
from proxyless_mesh.policy import PolicySet
from proxyless_mesh.telemetry import Telemetry, TelemetryConfig, Workload

from .test_dry_run_span import DRY_RUN_DENY, shadow_points

POLICY = "ns[web]-policy[deny-everyone]-rule[0]"
UNARY = "/test.Echo/Unary"
STREAM = "/test.Echo/Stream"


def _telemetry() -> tuple[Telemetry, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    config = TelemetryConfig(
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracing=False,
        access_log=True,
        access_log_format="json",
    )
    return Telemetry(config, Workload("web", "web", "spiffe://cluster.local/ns/web/sa/web")), reader


def _handlers(aio: bool) -> grpc.GenericRpcHandler:
    if aio:

        async def unary(request: bytes, context: Any) -> bytes:
            return b"ok:" + request

        async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
            for _ in range(2):
                yield b"ok"

    else:

        def unary(request: bytes, context: Any) -> bytes:  # type: ignore[misc]
            return b"ok:" + request

        def stream(request: bytes, context: Any) -> Iterator[bytes]:  # type: ignore[misc]
            yield from (b"ok", b"ok")

    return grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )


def _check(reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture) -> None:
    lines = [
        json.loads(r.getMessage()) for r in caplog.records if r.name == "proxyless_mesh.access"
    ]
    assert len(lines) == 2  # the unary and the streaming RPC
    for line in lines:
        assert line["istio_dry_run_deny_shadow_engine_result"] == "denied"
        assert line["istio_dry_run_deny_shadow_effective_policy_id"] == POLICY
    attributes = {
        "shadow_rules_stat_prefix": "istio_dry_run_deny_",
        "result": "denied",
        "shadow_effective_policy_id": POLICY,
    }
    assert shadow_points(reader) == [(attributes, 2)]


def test_sync_grpc_server_reports_dry_run(caplog: pytest.LogCaptureFixture) -> None:
    telemetry, reader = _telemetry()
    policies = PolicySet(authorization_policies_to_rbac([DRY_RUN_DENY]))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        interceptors=[
            TelemetryServerInterceptor(telemetry=telemetry),
            AuthorizationServerInterceptor(policies=lambda: policies),
        ],
    )
    server.add_generic_rpc_handlers((_handlers(aio=False),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    caplog.set_level("INFO", logger="proxyless_mesh.access")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert channel.unary_unary(UNARY)(b"x", timeout=10) == b"ok:x"  # never denied
            assert list(channel.unary_stream(STREAM)(b"x", timeout=10)) == [b"ok", b"ok"]
    finally:
        server.stop(grace=None).wait(10)
    _check(reader, caplog)


def test_aio_grpc_server_reports_dry_run(caplog: pytest.LogCaptureFixture) -> None:
    telemetry, reader = _telemetry()
    policies = PolicySet(authorization_policies_to_rbac([DRY_RUN_DENY]))
    caplog.set_level("INFO", logger="proxyless_mesh.access")

    async def scenario() -> None:
        server = grpc.aio.server(
            interceptors=[
                AioTelemetryServerInterceptor(telemetry=telemetry),
                AioAuthorizationServerInterceptor(policies=lambda: policies),
            ]
        )
        server.add_generic_rpc_handlers((_handlers(aio=True),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert await channel.unary_unary(UNARY)(b"x", timeout=10) == b"ok:x"
                got = [m async for m in channel.unary_stream(STREAM)(b"x", timeout=10)]
                assert got == [b"ok", b"ok"]
        finally:
            await server.stop(grace=None)

    asyncio.run(scenario())
    _check(reader, caplog)
