"""A small HTTP service for the demo and the tests: answers every request
with JSON naming its service and version, so callers can count who served.

    python examples/backend.py --service reviews --version v1 --ready-file F

Binds 127.0.0.1 (or --host) on a free port (or --port) and writes {"port": N} to the
ready file once it accepts connections.

Failure modes for resilience tests: `--fail-rate 0.3` answers 503 (or
`--fail-status`) to that share of requests, `--delay 2` waits before
answering. `GET /__stats` reports how many requests it served, by Host
header (that request itself is not counted).

`--metrics` reports Istio's standard metrics of the requests it serves
(`reporter="destination"`, as workload `<service>-<version>` of service
`<service>.default.mesh`) on a /metrics port of its own, named in the ready
file as "metrics_port", for a Prometheus to scrape (the demo's console).

`--bootstrap FILE` serves inside the mesh as that bootstrap's workload
(`serve_asgi`: with an identity from the control plane's CA, mutual TLS as
the control plane's PeerAuthentication says); without it, plain uvicorn.

`POST /__mode` with a JSON object changes those modes while the backend
runs, so a test can make a live endpoint start failing and later recover
without restarting it (a restart would change its port and its identity in
the mesh): {"fail_rate": 1.0, "fail_status": 503, "delay": 0}; keys left out
keep their value. It answers the resulting mode and is not counted either.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
from typing import Any

import uvicorn

Scope = dict[str, Any]


class Behaviour:
    """How this backend misbehaves (all off by default)."""

    def __init__(self, fail_rate: float = 0.0, fail_status: int = 503, delay: float = 0.0) -> None:
        self.fail_rate = fail_rate
        self.fail_status = fail_status
        self.delay = delay
        self.served: dict[str, int] = {}
        self.rng = random.Random()

    def change(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Apply a `POST /__mode` body; (400, error) leaves the mode unchanged."""
        try:
            wanted = json.loads(body or b"{}")
            if not isinstance(wanted, dict) or set(wanted) - {"fail_rate", "fail_status", "delay"}:
                raise ValueError("expected an object with fail_rate, fail_status, delay")
            fail_rate = float(wanted.get("fail_rate", self.fail_rate))
            fail_status = int(wanted.get("fail_status", self.fail_status))
            delay = float(wanted.get("delay", self.delay))
            if not 0.0 <= fail_rate <= 1.0 or not 100 <= fail_status <= 599 or delay < 0:
                raise ValueError("fail_rate in [0, 1], fail_status in 100..599, delay >= 0")
        except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            return 400, {"error": str(exc)}
        self.fail_rate, self.fail_status, self.delay = fail_rate, fail_status, delay
        return 200, self.mode()

    def mode(self) -> dict[str, Any]:
        return {"fail_rate": self.fail_rate, "fail_status": self.fail_status, "delay": self.delay}


async def respond(send: Any, status: int, body: bytes, version: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-version", version.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def make_app(service: str, version: str, behaviour: Behaviour | None = None) -> Any:
    behaviour = behaviour or Behaviour()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:  # drain the request body
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["path"] == "/__mode" and scope["method"] == "POST":
            status, answer = behaviour.change(body)
            await respond(send, status, json.dumps(answer).encode(), version)
            return
        if scope["path"] == "/__stats":
            stats = {"requests": sum(behaviour.served.values()), "hosts": behaviour.served}
            await respond(send, 200, json.dumps(stats).encode(), version)
            return
        host = headers.get("host", "")
        behaviour.served[host] = behaviour.served.get(host, 0) + 1
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        if behaviour.fail_rate and behaviour.rng.random() < behaviour.fail_rate:
            await respond(send, behaviour.fail_status, b'{"error": "injected"}', version)
            return
        body = json.dumps(
            {
                "service": service,
                "version": version,
                "path": scope["path"],
                "host": headers.get("host", ""),
            }
        ).encode()
        await respond(send, 200, body, version)

    return app


def write_ready(path: str, payload: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def with_metrics(app: Any, service: str, version: str) -> tuple[Any, int]:
    """`app` reporting Istio's metrics, and the port of their /metrics page."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import start_http_server

    from proxyless_mesh.integrations import TelemetryMiddleware
    from proxyless_mesh.telemetry import Telemetry, TelemetryConfig, Workload

    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    labels = {"app": service, "version": version}
    telemetry = Telemetry(
        TelemetryConfig(meter_provider=provider, tracing=False),
        Workload(f"{service}-{version}", "default", labels=labels),
    )
    metrics_server, _ = start_http_server(0, addr="127.0.0.1")
    host = f"{service}.default.mesh"
    return TelemetryMiddleware(app, telemetry=telemetry, service=host), metrics_server.server_port


async def serve(
    service: str,
    version: str,
    port: int,
    ready_file: str | None,
    behaviour: Behaviour,
    host: str = "127.0.0.1",
    metrics: bool = False,
    bootstrap: str | None = None,
) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this on Linux: without it, a response written
    # in two pieces waits for the client's delayed ACK (about 40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    app, ready = make_app(service, version, behaviour), dict[str, int]()
    if metrics:
        app, ready["metrics_port"] = with_metrics(app, service, version)
    if bootstrap is not None:
        await serve_in_mesh(app, sock, bootstrap, ready_file, ready)
        return
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    if ready_file:
        write_ready(ready_file, {"port": sock.getsockname()[1], "pid": os.getpid(), **ready})
    await task


async def serve_in_mesh(
    app: Any, sock: socket.socket, bootstrap: str, ready_file: str | None, ready: dict[str, int]
) -> None:
    """Serve `app` as the bootstrap's workload. Ready once listening: the
    control plane learns this port from the ServiceEntry written after."""
    from proxyless_mesh import Mesh
    from proxyless_mesh.serving import serve_asgi

    sock.listen(128)
    with Mesh.from_bootstrap(bootstrap) as mesh:
        if ready_file:
            write_ready(ready_file, {"port": sock.getsockname()[1], "pid": os.getpid(), **ready})
        await serve_asgi(app, mesh, sockets=[sock], log_level="warning", access_log=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--service", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind")
    parser.add_argument("--ready-file")
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--fail-status", type=int, default=503)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--metrics", action="store_true", help="Istio's metrics on a /metrics port")
    parser.add_argument("--bootstrap", help="serve inside the mesh as this bootstrap's workload")
    args = parser.parse_args()
    behaviour = Behaviour(args.fail_rate, args.fail_status, args.delay)
    asyncio.run(
        serve(
            args.service,
            args.version,
            args.port,
            args.ready_file,
            behaviour,
            args.host,
            args.metrics,
            args.bootstrap,
        )
    )


if __name__ == "__main__":
    main()
