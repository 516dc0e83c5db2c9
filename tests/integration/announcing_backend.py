"""A backend on port 0 that joins the mesh by announcing its ports.

    python announcing_backend.py --bootstrap B --group ns/name --version v1 \
        [--announce http,grpc] [--grpc] --ready-file F

`Registration(ports=None)` (no --announce) or `ports={name: 0, ...}`: no number is
known up front. uvicorn through `serve_asgi(port=0)` announces "http" once it
accepts connections; with --grpc a grpc.aio server added with `add_mesh_port`
("127.0.0.1:0") announces "grpc" and answers /test.Echo/Version with the version.
The ready file carries the announced ports once the registration was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import grpc
import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from backend import make_app
from backend_support import backend_parser, echo_handler, write_ready

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.registration import Registration
from proxyless_mesh.serving import add_mesh_port, serve_asgi


async def main(args: argparse.Namespace) -> int:
    names = [n for n in args.announce.split(",") if n]
    labels = {"version": args.version}
    if args.grpc:
        labels["speaks"] = "grpc"
    registration = Registration(
        group=args.group,
        ports={n: 0 for n in names} or None,
        labels=labels,
        drain_seconds=args.drain,
    )
    async with Mesh(Bootstrap.from_file(args.bootstrap), register=registration) as mesh:
        grpc_server = None
        if args.grpc:
            grpc_server = grpc.aio.server()
            grpc_server.add_generic_rpc_handlers([echo_handler(args.version, aio=True)])
            add_mesh_port(grpc_server, "127.0.0.1:0", mesh)
            await grpc_server.start()
        app = make_app(args.service, args.version)
        serving = asyncio.create_task(
            serve_asgi(app, mesh, host="127.0.0.1", port=0, log_level="warning")
        )
        # Registration has no event to await from outside: poll its public state.
        while "http" not in (registration.registered_ports or {}):
            if serving.done():
                await serving  # raises why (RegistrationError when refused)
                return 1
            await asyncio.sleep(0.01)
        write_ready(args.ready_file, {**registration.current_ports(), "pid": os.getpid()})
        await serving  # until SIGTERM (uvicorn's own handler)
        if grpc_server is not None:
            await grpc_server.stop(None)
    return 0


if __name__ == "__main__":
    parser = backend_parser()
    parser.add_argument("--service", default="reviews")
    parser.add_argument("--announce", default="")
    parser.add_argument("--grpc", action="store_true")
    parser.add_argument("--drain", type=float, default=0.0, help="Registration.drain_seconds")
    sys.exit(asyncio.run(main(parser.parse_args())))
