"""A small gRPC service for the demo and the interop tests.

Method `/greeter.Greeter/SayHello` takes any bytes and answers
`<service>/<version>`, so callers can count which version served them. No
generated code: a generic handler with raw bytes keeps the example tiny.

    python examples/grpc_backend.py --service greeter --version v1 --ready-file F
"""

from __future__ import annotations

import argparse
import os
from concurrent import futures

import grpc
from backend import write_ready

METHOD = "/greeter.Greeter/SayHello"


def serve(service: str, version: str, port: int, ready_file: str | None) -> None:
    answer = f"{service}/{version}".encode()

    def say_hello(request: bytes, context: grpc.ServicerContext) -> bytes:
        return answer

    handler = grpc.method_handlers_generic_handler(
        "greeter.Greeter", {"SayHello": grpc.unary_unary_rpc_method_handler(say_hello)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
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
    args = parser.parse_args()
    serve(args.service, args.version, args.port, args.ready_file)


if __name__ == "__main__":
    main()
