"""Istio's request metrics scraped from the mesh admin port, as Prometheus
scrapes a sidecar's `/stats/prometheus` (issue 25).

A real meshed client (no OpenTelemetry SDK anywhere: the metrics are kept
natively) calls real local servers (uvicorn behind TelemetryMiddleware; a
grpc server with the telemetry interceptor) through a real control plane;
then `/stats/prometheus` is read over HTTP from `Mesh(admin_address=...)`
and must count exactly the calls made, with a duration histogram whose
buckets hold them all. The same port still answers CSDS over gRPC.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import grpc
import httpx
import pytest
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from meshlab import LocalMesh
from prometheus_client.parser import text_string_to_metric_families
from test_telemetry_metrics import (
    CHAT,
    GRPC_HOST,
    HOST,
    GrpcServer,
    HttpServer,
    grpc_config,
    grpc_server,
    http_config,
    http_server,
)

from proxyless_mesh import Mesh
from proxyless_mesh.diagnostics import PROMETHEUS_CONTENT_TYPE
from proxyless_mesh.errors import NoRouteError
from proxyless_mesh.telemetry import TelemetryConfig

__all__ = ["grpc_server", "http_server"]  # the fixtures, shared with the OTel tests

NO_SDK = TelemetryConfig(otel_metrics=False, tracing=False)


def scrape(mesh: Mesh) -> dict[str, list[tuple[dict[str, str], float]]]:
    """GET /stats/prometheus on the admin port: each sample name's samples."""
    assert mesh.diagnostics is not None
    url = f"http://{mesh.diagnostics.address}/stats/prometheus"
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == PROMETHEUS_CONTENT_TYPE
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def by(samples: list[tuple[dict[str, str], float]], *keys: str) -> Counter[tuple[str, ...]]:
    out: Counter[tuple[str, ...]] = Counter()
    for labels, value in samples:
        out[tuple(labels.get(k, "") for k in keys)] += int(value)
    return out


CODES = ("reporter", "response_code", "response_flags", "destination_workload")


def test_http_calls_scraped_from_the_admin_port(lab: LocalMesh, http_server: HttpServer) -> None:
    http_config(lab, http_server.port)
    url = f"http://{HOST}:8080"
    bootstrap = lab.bootstrap("frontend")
    with (
        Mesh.from_bootstrap(bootstrap, telemetry=NO_SDK, admin_address="127.0.0.1:0") as mesh,
        httpx.Client(transport=mesh.httpx_transport(), timeout=10) as client,
    ):
        started = time.perf_counter()
        assert [client.get(f"{url}/ok").status_code for _ in range(3)] == [200] * 3
        assert [client.get(f"{url}/fail").status_code for _ in range(2)] == [503] * 2
        elapsed_ms = (time.perf_counter() - started) * 1000
        with pytest.raises(NoRouteError):
            client.get(f"{url}/nope")
        stats = scrape(mesh)
        csds = csds_over_the_same_port(mesh)
        other_answers = admin_http_answers(mesh)

    assert by(stats["istio_requests_total"], *CODES) == {
        ("source", "200", "-", "echo-v1"): 3,
        ("source", "503", "-", "echo-v1"): 2,
        ("source", "404", "NR", "unknown"): 1,
    }
    ok = {
        labels["le"]: value
        for labels, value in stats["istio_request_duration_milliseconds_bucket"]
        if labels["response_code"] == "200"
    }
    counts = [ok[le] for le in sorted(ok, key=float)]
    assert counts == sorted(counts) and counts[-1] == 3  # cumulative, +Inf holds all
    ((labels, total),) = [
        s
        for s in stats["istio_request_duration_milliseconds_sum"]
        if s[0]["response_code"] == "200"
    ]
    assert 0 < total <= elapsed_ms
    assert labels["destination_service"] == HOST
    assert labels["source_workload"] == "frontend"
    ((_, count),) = [
        s
        for s in stats["istio_request_duration_milliseconds_count"]
        if s[0]["response_code"] == "200"
    ]
    assert count == 3
    responses = by(stats["istio_response_bytes_sum"], "response_code")
    assert responses == {("200",): 3 * len(b"echo"), ("503",): 2 * len(b"echo"), ("404",): 0}
    assert [v for _, v in stats["istio_build"]] == [1]
    clusters = {
        labels["cluster_name"]: value for labels, value in stats["envoy_cluster_upstream_rq_active"]
    }
    assert clusters == {f"outbound|8080||{HOST}": 0}
    assert csds.config[0].node.id == "frontend"
    assert other_answers == [200, 200, 404, 405]


def admin_http_answers(mesh: Mesh) -> list[int]:
    """Two scrapes on one kept-alive connection, another path, another method."""
    assert mesh.diagnostics is not None
    with httpx.Client(base_url=f"http://{mesh.diagnostics.address}", timeout=10) as client:
        return [
            client.get("/stats/prometheus").status_code,
            client.get("/stats/prometheus?format=text").status_code,
            client.get("/config_dump").status_code,
            client.post("/stats/prometheus", content=b"x").status_code,
        ]


def csds_over_the_same_port(mesh: Mesh) -> Any:
    assert mesh.diagnostics is not None
    with grpc.insecure_channel(mesh.diagnostics.address) as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        return stub.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=10)


async def test_grpc_calls_scraped_from_the_admin_port(
    lab: LocalMesh, grpc_server: GrpcServer
) -> None:
    grpc_config(lab, grpc_server.port)
    bootstrap = lab.bootstrap("frontend")
    async with Mesh.from_bootstrap(
        bootstrap, telemetry=NO_SDK, admin_address="127.0.0.1:0"
    ) as mesh:
        channel = mesh.aio_grpc_channel(f"{GRPC_HOST}:50051")
        ok = channel.unary_unary("/greeter.Greeter/Ok")
        for _ in range(2):
            assert await ok(b"x", timeout=5) == b"hello x"
        with pytest.raises(grpc.RpcError):
            await channel.unary_unary("/greeter.Greeter/Fail")(b"x", timeout=5)
        chat = channel.stream_stream("/greeter.Greeter/Chat")
        assert len([m async for m in chat(iter(CHAT), timeout=5)]) == 2 * len(CHAT)
        await channel.close()
        stats = await asyncio_scrape(mesh)

    keys = ("request_protocol", "grpc_response_status")
    assert by(stats["istio_requests_total"], *keys) == {("grpc", "0"): 3, ("grpc", "13"): 1}
    assert by(stats["istio_request_messages_total"], "grpc_response_status") == {
        ("0",): 2 + len(CHAT),
        ("13",): 1,
    }
    assert by(stats["istio_response_messages_total"], "grpc_response_status") == {
        ("0",): 2 + 2 * len(CHAT),
        ("13",): 0,
    }
    infinite = [
        v
        for labels, v in stats["istio_request_duration_milliseconds_bucket"]
        if labels["le"] == "+Inf"
    ]
    assert sorted(infinite) == [1, 3]


async def asyncio_scrape(mesh: Mesh) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The scrape from another thread: the admin port runs on this loop."""
    import asyncio

    return await asyncio.to_thread(scrape, mesh)
