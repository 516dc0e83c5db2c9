"""A STRICT gRPC server in a mesh workload, as a user writes one with the defaults.

    python grpc_defaults_server.py BOOTSTRAP --ready-file F

`add_mesh_port(grpc.server(...), "127.0.0.1:0", mesh)` with no mode (STRICT:
the mesh has an identity). /test.Echo/Peer answers the caller's verified
SPIFFE ID (`grpc_peer_identity`). The ready file carries the bound port;
SIGTERM stops the server, then the mesh.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from backend_support import ECHO_SERVICE, write_ready

from proxyless_mesh import Mesh
from proxyless_mesh.serving import add_mesh_port, grpc_peer_identity


def peer(request: bytes, context: Any) -> bytes:
    return (grpc_peer_identity(context) or "plaintext").encode()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("bootstrap")
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Mesh.from_bootstrap(args.bootstrap) as mesh:
        server = grpc.server(ThreadPoolExecutor(max_workers=2))
        handler = grpc.unary_unary_rpc_method_handler(peer)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(ECHO_SERVICE, {"Peer": handler})]
        )
        port = add_mesh_port(server, "127.0.0.1:0", mesh)
        server.start()
        try:
            write_ready(args.ready_file, {"port": port, "identity": mesh.identity or ""})
            stop.wait()
        finally:
            server.stop(None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
