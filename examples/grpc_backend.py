"""A small gRPC service for the demo and the interop tests.

Method `/greeter.Greeter/SayHello` takes any bytes and answers
`<service>/<version>`, so callers can count which version served them. No
generated code: a generic handler with raw bytes keeps the example tiny.

    python examples/grpc_backend.py --service greeter --version v1 --ready-file F

Failure modes for resilience tests (all off by default): `--fail-rate 0.5`
fails that share of SayHello calls with `--fail-code` (a gRPC status name,
UNAVAILABLE by default), `--delay 2` waits that many seconds before answering
(or until the caller goes away). `/greeter.Greeter/Stats` answers JSON counts of
the SayHello calls seen, so a test can tell what reached the backend:
`calls`, `failed` (failures this backend chose to return) and `retried` (calls
carrying `grpc-previous-rpc-attempts`, the header gRPC retries add, gRFC A6).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from backend import write_ready

METHOD = "/greeter.Greeter/SayHello"
STATS_METHOD = "/greeter.Greeter/Stats"
RETRY_HEADER = "grpc-previous-rpc-attempts"


@dataclass
class Behaviour:
    """How this backend misbehaves, and what it has seen (counters under a lock:
    the handlers run on a thread pool)."""

    fail_rate: float = 0.0
    fail_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    delay: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: {"calls": 0, "failed": 0, "retried": 0})
    lock: threading.Lock = field(default_factory=threading.Lock)
    rng: random.Random = field(default_factory=random.Random)

    def count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def snapshot(self) -> bytes:
        with self.lock:
            return json.dumps(self.counts).encode()


def status_code(name: str) -> grpc.StatusCode:
    """`UNAVAILABLE` -> grpc.StatusCode.UNAVAILABLE (argparse type)."""
    try:
        return grpc.StatusCode[name.upper()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown gRPC status {name!r}") from None


def serve(
    service: str, version: str, port: int, ready_file: str | None, behaviour: Behaviour
) -> None:
    answer = f"{service}/{version}".encode()

    def say_hello(request: bytes, context: grpc.ServicerContext) -> bytes:
        behaviour.count("calls")
        if any(key == RETRY_HEADER for key, _ in context.invocation_metadata()):
            behaviour.count("retried")
        if behaviour.delay > 0:
            # Wake early when the caller cancels or its deadline passes, so a
            # slow backend does not hold pool threads for callers long gone.
            gone = threading.Event()
            context.add_callback(gone.set)
            gone.wait(behaviour.delay)
        if behaviour.fail_rate > 0 and behaviour.rng.random() < behaviour.fail_rate:
            behaviour.count("failed")
            context.abort(behaviour.fail_code, f"{service}/{version} injected failure")
        return answer

    def stats(request: bytes, context: grpc.ServicerContext) -> bytes:
        return behaviour.snapshot()

    handler = grpc.method_handlers_generic_handler(
        "greeter.Greeter",
        {
            "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),
            "Stats": grpc.unary_unary_rpc_method_handler(stats),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    if ready_file:
        write_ready(ready_file, {"port": bound, "pid": os.getpid()})
    server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--service", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of calls to fail")
    parser.add_argument(
        "--fail-code", type=status_code, default=grpc.StatusCode.UNAVAILABLE, help="status name"
    )
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before answering")
    args = parser.parse_args()
    if not 0.0 <= args.fail_rate <= 1.0:
        parser.error("--fail-rate must be between 0 and 1")
    behaviour = Behaviour(fail_rate=args.fail_rate, fail_code=args.fail_code, delay=args.delay)
    serve(args.service, args.version, args.port, args.ready_file, behaviour)


if __name__ == "__main__":
    main()
