"""Inbound telemetry: ASGI/WSGI middleware and the grpc.aio interceptor."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxyless_mesh.integrations import (
    AioTelemetryServerInterceptor,
    TelemetryMiddleware,
    WsgiTelemetryMiddleware,
)
from proxyless_mesh.telemetry import Telemetry, TelemetryConfig, Workload
from proxyless_mesh.telemetry._labels import parse_peer

ME = Workload("api", "shop", "spiffe://cluster.local/ns/shop/sa/api")


def telemetry() -> tuple[Telemetry, InMemoryMetricReader, InMemorySpanExporter]:
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = TelemetryConfig(
        meter_provider=MeterProvider(metric_readers=[reader]), tracer_provider=tracer_provider
    )
    return Telemetry(config, ME), reader, exporter


def series(
    reader: InMemoryMetricReader, *keys: str, name: str = "istio_requests_total"
) -> dict[tuple[Any, ...], int]:
    data = reader.get_metrics_data()
    out: dict[tuple[Any, ...], int] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    for p in m.data.data_points:
                        key = tuple(p.attributes[k] for k in keys)
                        out[key] = out.get(key, 0) + int(p.value)
    return out


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    if scope["path"] == "/boom":
        raise RuntimeError("app bug")
    body = b"hello world"
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def test_asgi_middleware_records_and_answers_the_peer_header() -> None:
    tel, reader, exporter = telemetry()
    app = TelemetryMiddleware(asgi_app, telemetry=tel, service="api.shop.mesh")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.shop.mesh") as client:
        answer = await client.post(
            "/x",
            content=b"12345",
            headers={
                **dict(Workload("frontend", "web").peer_headers),
                "traceparent": f"00-{'a' * 32}-{'b' * 16}-01",
            },
        )
        assert answer.status_code == 201
        answered = parse_peer(answer.headers["x-envoy-peer-metadata"])
        assert answered is not None and (answered.name, answered.namespace) == ("api", "shop")
        assert (await client.get("/boom")).status_code == 500
        plain = await client.get("/y")  # no peer header: none answered
        assert "x-envoy-peer-metadata" not in plain.headers
    keys = ("reporter", "source_workload", "source_workload_namespace", "response_code")
    assert series(reader, *keys) == {
        ("destination", "frontend", "web", "201"): 1,
        ("destination", "unknown", "unknown", "500"): 1,
        ("destination", "unknown", "unknown", "201"): 1,
    }
    spans = exporter.get_finished_spans()
    first = spans[0]
    assert first.kind.name == "SERVER"
    assert first.parent is not None and first.parent.span_id == int("b" * 16, 16)
    assert first.attributes["http.response.status_code"] == 201


async def test_asgi_non_http_scopes_pass_through() -> None:
    tel, reader, _ = telemetry()
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await TelemetryMiddleware(app, telemetry=tel)({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]
    assert series(reader, "reporter") == {}


def test_wsgi_middleware_counts_body_and_status() -> None:
    tel, reader, _ = telemetry()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        yield b"not "
        yield b"here"

    middleware = WsgiTelemetryMiddleware(app, telemetry=tel, service="api.shop.mesh")
    environ = {
        "REQUEST_METHOD": "PUT",
        "PATH_INFO": "/thing",
        "HTTP_HOST": "api.shop.mesh",
        "CONTENT_LENGTH": "3",
        "wsgi.input": io.BytesIO(b"abc"),
        "proxyless_mesh.peer_principal": "spiffe://cluster.local/ns/web/sa/frontend",
    }
    heads: list[Any] = []
    body = middleware(environ, lambda status, headers, *exc: heads.append((status, headers)))
    assert b"".join(body) == b"not here"
    assert series(reader, "reporter") == {}  # recorded on close, not before
    body.close()  # type: ignore[attr-defined]
    keys = (
        "source_principal",
        "source_workload_namespace",
        "response_code",
        "connection_security_policy",
    )
    assert series(reader, *keys) == {
        ("spiffe://cluster.local/ns/web/sa/frontend", "web", "404", "mutual_tls"): 1
    }


@pytest.fixture
async def aio_server() -> AsyncIterator[tuple[str, InMemoryMetricReader]]:
    tel, reader, _ = telemetry()

    async def unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        if request == b"deny":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
        return request.upper()

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for i in range(3):
            yield bytes([65 + i])

    handler = grpc.method_handlers_generic_handler(
        "t.S",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.aio.server(interceptors=[AioTelemetryServerInterceptor(telemetry=tel)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", reader
    finally:
        await server.stop(None)


async def test_aio_interceptor_records_unary_stream_and_aborts(
    aio_server: tuple[str, InMemoryMetricReader],
) -> None:
    address, reader = aio_server
    async with grpc.aio.insecure_channel(address) as channel:
        assert await channel.unary_unary("/t.S/Unary")(b"hi") == b"HI"
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary("/t.S/Unary")(b"deny")
        got = [m async for m in channel.unary_stream("/t.S/Stream")(b"x")]
        assert got == [b"A", b"B", b"C"]
    keys = ("request_protocol", "grpc_response_status", "response_code")
    assert series(reader, *keys) == {("grpc", "0", "200"): 2, ("grpc", "7", "200"): 1}
    # Istio's gRPC message counts: one request message per call; responses:
    # 1 (unary), 0 (aborted), 3 (the stream)
    by_status = ("grpc_response_status",)
    assert series(reader, *by_status, name="istio_request_messages_total") == {("0",): 2, ("7",): 1}
    assert series(reader, *by_status, name="istio_response_messages_total") == {
        ("0",): 4,
        ("7",): 0,
    }
    # and their sizes: b"HI" and the stream's three bytes (the unary response
    # is recorded once serialized, not when the handler returns)
    assert response_bytes(reader) == {"0": 5, "7": 0}


def response_bytes(reader: InMemoryMetricReader) -> dict[str, int]:
    """istio_response_bytes' sum by grpc_response_status."""
    data = reader.get_metrics_data()
    out: dict[str, int] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "istio_response_bytes":
                    for p in m.data.data_points:
                        status = str(p.attributes["grpc_response_status"])
                        out[status] = out.get(status, 0) + int(p.sum)
    return out
