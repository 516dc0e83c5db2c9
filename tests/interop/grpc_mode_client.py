"""The call loop of the gRPC modes suite, and its native-mode process.

`run_calls` makes the calls on any channel (a library-mode `MeshChannel` in
the test process, or grpcio's own `xds:///` channel here) and reports each
call's status, answer and duration, so both modes are judged by one code path.
Native mode needs a process of its own because grpcio reads its xDS bootstrap
once per process:

    python grpc_mode_client.py BOOTSTRAP host.mesh:50051 --calls 10 \
        [--concurrent] [--deadline 10] [--metadata k=v]
    python grpc_mode_client.py BOOTSTRAP --serve 127.0.0.1:PORT

prints `{"results": [{"code": "OK", "answer": "greeter/v1", "seconds": 0.001}]}`.
The channel comes from `Mesh.grpc_channel(target, native=True)`, the API a
user calls, after it is READY so no measured call includes the xDS fetch.
`--serve` runs the native server side instead: `grpc.server(xds=True)`, which
enforces the inbound listener (RBAC) the control plane sends for its address;
it prints `started` once serving and stops when stdin closes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.experimental

from proxyless_mesh import Mesh

METHOD = "/greeter.Greeter/SayHello"
READY_TIMEOUT = 20.0


def _call(
    say_hello: Any, deadline: float, metadata: tuple[tuple[str, str], ...], started: float
) -> dict[str, Any]:
    """One blocking call and how it ended, timed from `started`."""
    try:
        reply = say_hello(b"hi", timeout=deadline, metadata=metadata)
    except grpc.RpcError as error:
        return {
            "code": error.code().name,
            "answer": error.details(),
            "seconds": time.monotonic() - started,
        }
    return {"code": "OK", "answer": reply.decode(), "seconds": time.monotonic() - started}


def run_calls(
    channel: grpc.Channel,
    calls: int,
    *,
    concurrent: bool = False,
    deadline: float = 10.0,
    metadata: tuple[tuple[str, str], ...] = (),
) -> list[dict[str, Any]]:
    """One after the other, or all at once (`concurrent`: one thread each, all
    timed from a common start). Blocking calls, not `.future()`: library mode
    sends sync futures around its resilience engine (a documented limit of
    _grpc_client.py), and the suite is about what the engine does."""
    say_hello = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    if not concurrent:
        return [_call(say_hello, deadline, metadata, time.monotonic()) for _ in range(calls)]
    started = time.monotonic()
    with ThreadPoolExecutor(calls) as pool:
        running = [pool.submit(_call, say_hello, deadline, metadata, started) for _ in range(calls)]
        return [future.result() for future in running]


def greet(request: bytes, context: grpc.ServicerContext) -> bytes:
    """The servers' SayHello: says who called (the verified SPIFFE ID, or
    `plaintext`), so a test sees the identity the server saw."""
    ids = (context.auth_context() or {}).get("peer_spiffe_id") or [b"plaintext"]
    return bytes(ids[0])


def greeter_handler() -> grpc.GenericRpcHandler[bytes, bytes]:
    return grpc.method_handlers_generic_handler(
        "greeter.Greeter", {"SayHello": grpc.unary_unary_rpc_method_handler(greet)}
    )


def serve_native(address: str) -> None:
    server = grpc.server(ThreadPoolExecutor(4), xds=True)
    server.add_generic_rpc_handlers((greeter_handler(),))
    server.add_secure_port(address, grpc.xds_server_credentials(grpc.insecure_server_credentials()))
    server.start()
    print("started", flush=True)
    sys.stdin.read()
    server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bootstrap")
    parser.add_argument("target", nargs="?")
    parser.add_argument("--mtls", action="store_true", help="the mTLS client bootstrap")
    parser.add_argument("--serve", metavar="ADDRESS", help="run the xDS server instead")
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--concurrent", action="store_true")
    parser.add_argument("--deadline", type=float, default=10.0)
    parser.add_argument("--metadata", action="append", default=[], help="key=value")
    args = parser.parse_args()
    metadata = tuple(tuple(m.split("=", 1)) for m in args.metadata)
    # With a join token in the bootstrap, starting the Mesh fetches this
    # workload's certificate into the credentials_dir grpcio's xDS security reads.
    with Mesh.from_bootstrap(args.bootstrap) as mesh:
        if args.serve:
            os.environ["GRPC_XDS_BOOTSTRAP"] = args.bootstrap
            serve_native(args.serve)
            return
        if args.mtls:  # the mesh's own native channel carries xDS credentials
            os.environ["GRPC_XDS_BOOTSTRAP"] = args.bootstrap
        channel = mesh.grpc_channel(args.target, native=True)
        with channel:
            grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT)
            results = run_calls(
                channel,
                args.calls,
                concurrent=args.concurrent,
                deadline=args.deadline,
                metadata=metadata,
            )
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
