"""One data-path client in a process of its own, driven over stdin/stdout.

    python benchmarks/load_worker.py --kind http --target URL [--mesh-bootstrap F]
    python benchmarks/load_worker.py --kind grpc --target 127.0.0.1:N | xds:///host:port
    python benchmarks/load_worker.py --kind grpc --target host:port --mesh-bootstrap F

Why a process per row: its CPU time and memory are then the row's alone
(read from /proc by the harness, or reported here), grpcio's native xDS mode
reads its bootstrap once per process, and no row's threads (the mesh's xDS
client, grpcio's pollers) disturb another row's measurement.

Commands, one JSON object per line on stdin, one JSON answer per line:
    {"op": "closed", "n": N}        N sequential requests, as fast as they go
    {"op": "open", "n": N, "rate": R}  N requests scheduled R per second
Answer: {"hist": <HdrHistogram, base64>, "elapsed": s, "cpu": s, "errors": k,
"rss_kb": VmRSS}. Latencies are recorded in microseconds. In open loop a
request that could not start on time (the previous one was still running)
is timed from when it was due, so queueing counts as latency (no coordinated
omission); a request that merely woke a little late from sleep is timed from
when it was sent, so the harness's sleep jitter does not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

PAYLOAD = b"x" * 1024
GRPC_METHOD = "/bench.Bench/Echo"
HIST_MAX_US = 60_000_000


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIST_MAX_US, 3)


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def http_caller(
    stack: ExitStack, target: str, bootstrap: str | None, new_connection: bool = False
) -> Callable[[], bool]:
    import httpx

    transport: httpx.BaseTransport | None = None
    if bootstrap is not None:
        from proxyless_mesh import Mesh

        authority = httpx.URL(target).netloc.decode()
        mesh = stack.enter_context(Mesh.from_bootstrap(bootstrap, preload=[authority]))
        transport = mesh.httpx_transport()
    client = stack.enter_context(httpx.Client(transport=transport, timeout=30))
    # `Connection: close`: the pool drops the connection after the response, so
    # every request pays a connect (and, with mTLS, a handshake).
    headers = {"connection": "close"} if new_connection else {}

    def call() -> bool:
        response = client.post(target, content=PAYLOAD, headers=headers)
        return response.status_code == 200 and len(response.content) == 1024

    return call


def grpc_caller(stack: ExitStack, target: str, bootstrap: str | None) -> Callable[[], bool]:
    import grpc

    if bootstrap is not None:  # library mode: the mesh routes each call
        from proxyless_mesh import Mesh

        mesh = stack.enter_context(Mesh.from_bootstrap(bootstrap, preload=[target]))
        channel = stack.enter_context(mesh.grpc_channel(target))
    else:
        channel = stack.enter_context(grpc.insecure_channel(target))
    echo = channel.unary_unary(GRPC_METHOD, None, None)  # raw bytes both ways

    def call() -> bool:
        return len(echo(PAYLOAD, timeout=30)) == 1024

    return call


def run_closed(call: Callable[[], bool], n: int, hist: HdrHistogram) -> int:
    errors = 0
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        ok = call()
        if ok:
            hist.record_value(max(1, (clock() - t0) // 1000))
        else:
            errors += 1
    return errors


def run_open(call: Callable[[], bool], n: int, rate: float, hist: HdrHistogram) -> int:
    errors = 0
    clock = time.perf_counter_ns
    interval = 1e9 / rate
    start = clock() + 1_000_000
    free_at = 0
    for i in range(n):
        due = start + int(i * interval)
        now = clock()
        if now < due:
            time.sleep((due - now) / 1e9)
        sent = clock()
        ok = call()
        done = clock()
        # Busy when due: queueing, timed from `due`. Free: timed from the send.
        began = due if free_at > due else sent
        free_at = done
        if ok:
            hist.record_value(max(1, (done - began) // 1000))
        else:
            errors += 1
    return errors


def serve_commands(call: Callable[[], bool]) -> None:
    print(json.dumps({"ready": True, "rss_kb": rss_kb()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            return
        hist = new_histogram()
        cpu0, t0 = time.process_time(), time.perf_counter()
        if command["op"] == "closed":
            errors = run_closed(call, int(command["n"]), hist)
        elif command["op"] == "open":
            errors = run_open(call, int(command["n"]), float(command["rate"]), hist)
        else:
            raise SystemExit(f"unknown op {command['op']!r}")
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        answer = {
            "hist": hist.encode().decode("ascii"),
            "elapsed": elapsed,
            "cpu": cpu,
            "errors": errors,
            "rss_kb": rss_kb(),
        }
        print(json.dumps(answer), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=("http", "grpc"), required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--mesh-bootstrap")
    parser.add_argument("--new-connection", action="store_true", help="HTTP: Connection: close")
    args = parser.parse_args()
    with ExitStack() as stack:
        if args.kind == "http":
            call = http_caller(stack, args.target, args.mesh_bootstrap, args.new_connection)
        else:
            call = grpc_caller(stack, args.target, args.mesh_bootstrap)
        serve_commands(call)


if __name__ == "__main__":
    main()
