"""Run by the interop test in its own process: grpcio's own xDS client.

    GRPC_XDS_BOOTSTRAP=... python grpc_xds_client.py xds:///greeter.default.mesh:50051 1000

Prints a JSON object counting which backend answered each call. grpcio reads
the bootstrap once per process, hence a process of its own.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import grpc


def main() -> None:
    target, calls = sys.argv[1], int(sys.argv[2])
    with grpc.insecure_channel(target) as channel:
        say_hello = channel.unary_unary("/greeter.Greeter/SayHello")
        counts = Counter(say_hello(b"hi", timeout=20).decode() for _ in range(calls))
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
