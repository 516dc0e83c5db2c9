"""Run by the resilience interop tests in a process of their own: grpcio's own
xDS client calling through whatever policy the control plane serves.

    GRPC_XDS_BOOTSTRAP=... python grpc_resilience_client.py xds:///h.mesh:50051 \
        --calls 100 [--concurrent] [--deadline 10]

Waits for the channel to be READY first, so that no measured call includes the
xDS fetch or the first connection; then makes the calls one after the other
(or all at once with --concurrent) and prints one JSON object:
`{"results": [{"code": "OK", "answer": "greeter/v1", "seconds": 0.001}, ...]}`.
grpcio reads GRPC_XDS_BOOTSTRAP once per process, hence a process of its own.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import grpc

METHOD = "/greeter.Greeter/SayHello"
READY_TIMEOUT = 20.0


def outcome(call: Any, started: float) -> dict[str, Any]:
    """One call's result; waits for the future to finish."""
    error = call.exception()
    seconds = time.monotonic() - started
    if error is None:
        return {"code": "OK", "answer": call.result().decode(), "seconds": seconds}
    if not isinstance(error, grpc.RpcError):
        raise error
    return {"code": error.code().name, "answer": error.details(), "seconds": seconds}


def stamp_when_done(finished: list[float], i: int) -> Callable[[Any], None]:
    """A done-callback recording when call i finished (it runs as soon as it is)."""

    def done(_future: Any) -> None:
        finished[i] = time.monotonic()

    return done


def run(target: str, calls: int, concurrent: bool, deadline: float) -> list[dict[str, Any]]:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT)
        say_hello = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        results = []
        if not concurrent:
            for _ in range(calls):
                started = time.monotonic()
                results.append(outcome(say_hello.future(b"hi", timeout=deadline), started))
            return results
        started = time.monotonic()
        futures = [say_hello.future(b"hi", timeout=deadline) for _ in range(calls)]
        finished = [0.0] * calls
        for i, future in enumerate(futures):
            future.add_done_callback(stamp_when_done(finished, i))
        for i, future in enumerate(futures):
            result = outcome(future, started)  # waits for it
            result["seconds"] = (finished[i] or time.monotonic()) - started
            results.append(result)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target")
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--concurrent", action="store_true")
    parser.add_argument("--deadline", type=float, default=10.0, help="the caller's own deadline")
    args = parser.parse_args()
    print(json.dumps({"results": run(args.target, args.calls, args.concurrent, args.deadline)}))


if __name__ == "__main__":
    main()
