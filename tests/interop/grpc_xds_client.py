"""Run by the interop tests in its own process: grpcio's own xDS client.

    GRPC_XDS_BOOTSTRAP=... python grpc_xds_client.py xds:///greeter.default.mesh:50051 1000

Prints a JSON object counting which backend answered each call. grpcio reads
the bootstrap once per process, hence a process of its own.

Options for the ring-hash test (the default output is unchanged without them):
`--header x-user --users 20` sends metadata `x-user: user-<i % 20>` on call i,
so each user's calls are interleaved with the others'; `--per-call` prints a
JSON list of [header value, answer] per call instead of the counts;
`--hold` then keeps the process (and its ADS stream) open until stdin closes,
so the test can read the control plane's ACK record of this client first.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

import grpc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target")
    parser.add_argument("calls", type=int)
    parser.add_argument("--header", help="metadata key carrying a user name on every call")
    parser.add_argument("--users", type=int, default=1, help="distinct header values, cycled")
    parser.add_argument("--per-call", action="store_true", help="print [value, answer] per call")
    parser.add_argument("--hold", action="store_true", help="stay connected until stdin closes")
    args = parser.parse_args()
    if args.users < 1:
        parser.error("--users must be at least 1")
    with grpc.insecure_channel(args.target) as channel:
        say_hello = channel.unary_unary(
            "/greeter.Greeter/SayHello", request_serializer=None, response_deserializer=None
        )
        answers: list[tuple[str, str]] = []
        for i in range(args.calls):
            value = f"user-{i % args.users}"
            metadata = ((str(args.header), value),) if args.header else None
            answers.append((value, say_hello(b"hi", timeout=20, metadata=metadata).decode()))
        if args.per_call:
            print(json.dumps(answers), flush=True)
        else:
            print(json.dumps(Counter(answer for _, answer in answers)), flush=True)
        if args.hold:
            sys.stdin.read()


if __name__ == "__main__":
    main()
