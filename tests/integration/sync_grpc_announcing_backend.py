"""A SYNC grpc.server on port 0 that joins the mesh by announcing "grpc".

    python sync_grpc_announcing_backend.py --bootstrap B --group ns/name \
        --version v1 --ready-file F

A blocking `Mesh` (its own loop thread) with `Registration(ports={"grpc": 0})`;
`add_mesh_port(grpc.server(...), "127.0.0.1:0", mesh)` binds and announces from
this (non-loop) thread. /test.Echo/Version answers the version. The ready file
carries the registered ports once Register was accepted; SIGTERM stops the server,
then the mesh (deregistering).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from backend_support import backend_parser, echo_handler, write_ready

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.registration import Registration
from proxyless_mesh.serving import add_mesh_port

REGISTER_LIMIT = 15.0


def main(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    registration = Registration(
        group=args.group,
        ports={"grpc": 0},
        labels={"version": args.version, "speaks": "grpc"},
        drain_seconds=0,
    )
    with Mesh(Bootstrap.from_file(args.bootstrap), register=registration) as mesh:
        server = grpc.server(ThreadPoolExecutor(max_workers=2))
        server.add_generic_rpc_handlers([echo_handler(args.version, aio=False)])
        bound = add_mesh_port(server, "127.0.0.1:0", mesh)
        server.start()
        try:
            # add_mesh_port drops the announcement's future: poll the public state.
            deadline = time.monotonic() + REGISTER_LIMIT
            while "grpc" not in (registration.registered_ports or {}):
                if time.monotonic() > deadline:
                    print("the announced gRPC port was never registered", file=sys.stderr)
                    return 1
                time.sleep(0.01)
            write_ready(
                args.ready_file,
                {**(registration.registered_ports or {}), "bound": bound, "pid": os.getpid()},
            )
            stop.wait()
        finally:
            server.stop(None)
    return 0


if __name__ == "__main__":
    sys.exit(main(backend_parser().parse_args()))
