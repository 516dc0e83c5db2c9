"""Traces and Prometheus across real processes (issue 8 acceptance).

Run as a script, this module is a meshed example service (the tests start
two of them): `--role backend` answers /ok, and /flaky with 503 on every
other call; `--role frontend` calls the backend through the mesh for
`/call?path=P`. Both wrap their app in TelemetryMiddleware, install the
OpenTelemetry SDK globally (the mesh uses the global providers by default),
keep spans in memory and write them to `--spans-file` on shutdown, and
serve Prometheus metrics on a port of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

HERE = Path(__file__).resolve()
BACKEND_HOST = "backend.default.mesh"


# -- the example service ---------------------------------------------------------


def _install_sdk() -> tuple[Any, int]:
    """Global tracer provider with an in-memory exporter; global meter
    provider exported for Prometheus on a port of its own (port 0)."""
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from prometheus_client import start_http_server

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    server, _ = start_http_server(0, addr="127.0.0.1")
    return exporter, int(server.server_port)


def _dump(exporter: Any, path: str) -> None:
    spans = []
    for span in exporter.get_finished_spans():
        context, parent = span.get_span_context(), span.parent
        spans.append(
            {
                "name": span.name,
                "kind": span.kind.name,
                "trace_id": f"{context.trace_id:032x}",
                "span_id": f"{context.span_id:016x}",
                "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
                "attributes": dict(span.attributes or {}),
            }
        )
    Path(path).write_text(json.dumps(spans))


async def _respond(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _service_app(
    role: str, bootstrap: str | None, on_ready: Callable[[], None], on_stop: Callable[[], None]
) -> Any:
    from proxyless_mesh import Mesh
    from proxyless_mesh.bootstrap import Bootstrap
    from proxyless_mesh.integrations import TelemetryMiddleware
    from proxyless_mesh.telemetry import Telemetry, TelemetryConfig, Workload

    calls = {"flaky": 0}
    state: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    if bootstrap:
                        mesh = Mesh.from_bootstrap(bootstrap, preload=[f"{BACKEND_HOST}:8080"])
                        state["mesh"] = await mesh.__aenter__()
                        state["client"] = httpx.AsyncClient(
                            transport=mesh.async_httpx_transport(), timeout=10
                        )
                    on_ready()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    if "client" in state:
                        await state["client"].aclose()
                        await state["mesh"].__aexit__(None, None, None)
                    on_stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if role == "backend":
            if path == "/flaky":
                calls["flaky"] += 1
                await _respond(send, 503 if calls["flaky"] % 2 else 200, b"flaky")
                return
            await _respond(send, 200, b"backend")
            return
        query = parse_qs(scope["query_string"].decode())
        answer = await state["client"].get(f"http://{BACKEND_HOST}:8080{query['path'][0]}")
        await _respond(send, answer.status_code, answer.content)

    if bootstrap:
        telemetry = Telemetry.from_bootstrap(Bootstrap.from_file(bootstrap))
    else:
        telemetry = Telemetry(TelemetryConfig(), Workload(role, "default"))
    service = BACKEND_HOST if role == "backend" else "frontend.default.mesh"
    return TelemetryMiddleware(app, telemetry=telemetry, service=service)


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=("backend", "frontend"), required=True)
    parser.add_argument("--bootstrap")
    parser.add_argument("--spans-file", required=True)
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args(argv)
    exporter, metrics_port = _install_sdk()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)

    def ready() -> None:
        payload = {"port": sock.getsockname()[1], "metrics_port": metrics_port}
        tmp = f"{args.ready_file}.tmp"
        Path(tmp).write_text(json.dumps(payload))
        os.replace(tmp, args.ready_file)

    # Spans are written at lifespan shutdown: uvicorn re-raises SIGTERM
    # after it, so code after serve() would not run.
    app = _service_app(args.role, args.bootstrap, ready, lambda: _dump(exporter, args.spans_file))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    asyncio.run(server.serve(sockets=[sock]))


# -- fixtures --------------------------------------------------------------------

if __name__ != "__main__":
    from meshlab import LocalMesh, Proc, service_entry, start_process
    from prometheus_lab import PrometheusServer as Prometheus


def start_service(lab: LocalMesh, role: str, bootstrap: Path | None = None) -> Proc:
    argv = [sys.executable, str(HERE), "--role", role, "--spans-file", spans_file(lab, role)]
    if bootstrap is not None:
        argv += ["--bootstrap", str(bootstrap)]
    proc = start_process(role, argv, lab.workdir)
    lab.procs.append(proc)
    return proc


def spans_file(lab: LocalMesh, role: str) -> str:
    return str(lab.workdir / f"{role}.spans.json")


def mesh_with_frontend(lab: LocalMesh) -> tuple[Proc, Proc]:
    backend = start_service(lab, "backend")
    lab.write_config(
        "backend.yaml",
        service_entry(BACKEND_HOST, 8080, [("127.0.0.1", backend.ready["port"], {})]),
    )
    route = {
        "route": [{"destination": {"host": BACKEND_HOST}}],
        "retries": {"attempts": 2, "retryOn": "5xx"},
    }
    lab.write_config(
        "vs.yaml",
        json.dumps(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "backend", "namespace": "default"},
                "spec": {"hosts": [BACKEND_HOST], "http": [route]},
            }
        ),
    )
    lab.start_control_plane()
    frontend = start_service(lab, "frontend", lab.bootstrap("frontend"))
    return backend, frontend


# -- traces ------------------------------------------------------------------------


def test_a_trace_spans_frontend_and_backend_with_one_span_per_attempt(lab: LocalMesh) -> None:
    backend, frontend = mesh_with_frontend(lab)
    url = f"http://127.0.0.1:{frontend.ready['port']}/call"
    ok_trace, flaky_trace, caller_span = "1" * 32, "2" * 32, "3" * 16
    for trace_id, path in ((ok_trace, "/ok"), (flaky_trace, "/flaky")):
        answer = httpx.get(
            url, params={"path": path}, headers={"traceparent": f"00-{trace_id}-{caller_span}-01"}
        )
        assert answer.status_code == 200, answer.text
    frontend.stop()
    backend.stop()
    spans = [
        *json.loads(Path(spans_file(lab, "frontend")).read_text()),
        *json.loads(Path(spans_file(lab, "backend")).read_text()),
    ]

    def tree(trace_id: str) -> dict[str, Any]:
        mine = [s for s in spans if s["trace_id"] == trace_id]
        (server,) = [s for s in mine if s["kind"] == "SERVER" and s["parent_id"] == caller_span]
        (call,) = [s for s in mine if s["parent_id"] == server["span_id"]]
        attempts = [s for s in mine if s["parent_id"] == call["span_id"]]
        backends = [s for s in mine if s["parent_id"] in {a["span_id"] for a in attempts}]
        return {"server": server, "call": call, "attempts": attempts, "backends": backends}

    ok = tree(ok_trace)
    assert ok["call"]["kind"] == "CLIENT"
    assert ok["call"]["name"] == f"{BACKEND_HOST}:8080/*"  # as Envoy names it
    # Istio's tags, beside the OpenTelemetry attributes:
    tags = ok["call"]["attributes"]
    assert tags["component"] == "proxy" and tags["istio.namespace"] == "default"
    assert tags["http.method"] == "GET" and tags["http.status_code"] == "200"
    assert tags["http.url"] == f"http://{BACKEND_HOST}:8080/ok"
    assert tags["upstream_cluster"] == f"outbound|8080||{BACKEND_HOST}"
    assert tags["response_flags"] == "-" and tags["peer.address"].startswith("127.0.0.1:")
    assert tags["istio.canonical_service"] and tags["istio.mesh_id"] == "cluster.local"
    assert ok["backends"][0]["name"] == f"{BACKEND_HOST}:8080/*"
    assert ok["backends"][0]["attributes"]["node_id"] == "backend"
    assert ok["call"]["attributes"]["mesh.upstream_cluster"]
    assert ok["call"]["attributes"]["mesh.response_flags"] == "-"
    assert ok["call"]["attributes"]["http.response.status_code"] == 200
    assert [a["kind"] for a in ok["attempts"]] == ["CLIENT"]
    assert [b["kind"] for b in ok["backends"]] == ["SERVER"]
    assert ok["backends"][0]["attributes"]["url.path"] == "/ok"

    flaky = tree(flaky_trace)
    first, second = sorted(
        flaky["attempts"], key=lambda a: a["attributes"].get("http.request.resend_count", 0)
    )
    assert first["attributes"]["http.response.status_code"] == 503
    assert second["attributes"]["http.request.resend_count"] == 1
    assert second["attributes"]["http.response.status_code"] == 200
    # Each try reached the backend with its own span as the parent.
    assert sorted(b["parent_id"] for b in flaky["backends"]) == sorted(
        [first["span_id"], second["span_id"]]
    )
    assert flaky["call"]["attributes"]["http.response.status_code"] == 200


# -- Prometheus ---------------------------------------------------------------------


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_prometheus_counts_the_requests_of_a_meshed_service(
    lab: LocalMesh, prometheus: Prometheus
) -> None:
    backend, frontend = mesh_with_frontend(lab)
    url = f"http://127.0.0.1:{frontend.ready['port']}/call"
    for _ in range(7):
        assert httpx.get(url, params={"path": "/ok"}).status_code == 200
    prometheus.start(
        {
            "frontend": [f"127.0.0.1:{frontend.ready['metrics_port']}"],
            "backend": [f"127.0.0.1:{backend.ready['metrics_port']}"],
        }
    )
    # Client side of the frontend -> backend calls, as Istio dashboards ask it.
    source = prometheus.wait_for_value(
        'sum(istio_requests_total{reporter="source",source_workload="frontend",'
        f'destination_service="{BACKEND_HOST}",response_code="200"}})',
        7,
    )
    assert source
    prometheus.wait_for_value(
        'sum(istio_requests_total{reporter="destination",destination_workload="backend",'
        'source_workload="frontend",response_code="200"})',
        7,
    )
    # The frontend's own inbound requests (from the test, not meshed).
    prometheus.wait_for_value(
        'sum(istio_requests_total{job="frontend",reporter="destination",'
        'destination_service="frontend.default.mesh"})',
        7,
    )
    durations = prometheus.query(
        'sum(istio_request_duration_milliseconds_count{reporter="source"})'
    )
    assert float(durations[0]["value"][1]) == 7


if __name__ == "__main__":
    main()
