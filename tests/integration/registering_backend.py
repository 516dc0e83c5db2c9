"""A backend that joins the mesh by starting: examples/backend.py's app on uvicorn,
plus `Mesh(..., register=Registration(...))` announcing its port and labels.

    python registering_backend.py --bootstrap B --group ns/name --version v1 --ready-file F

SIGTERM is a clean stop: the mesh deregisters (draining) and waits, then uvicorn
stops; SIGKILL is the abrupt one the tests also use.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from backend import make_app
from backend_support import backend_parser, write_ready

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.registration import Registration, RegistrationError


async def main(args: argparse.Namespace) -> int:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(make_app(args.service, args.version), log_level="warning")
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    registration = Registration(
        group=args.group,
        ports={"http": port},
        labels={"version": args.version},
        drain_seconds=args.drain,
    )
    mesh = Mesh(Bootstrap.from_file(args.bootstrap), register=registration)
    try:
        await mesh.__aenter__()
    except RegistrationError as exc:
        write_ready(args.ready_file, {"refused": str(exc)})
        server.should_exit = True
        await serving
        return 3
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    write_ready(args.ready_file, {"port": port, "pid": os.getpid()})
    await stop.wait()
    await mesh.__aexit__(None, None, None)  # deregister, drain, then close the stream
    server.should_exit = True
    await serving
    return 0


if __name__ == "__main__":
    parser = backend_parser()
    parser.add_argument("--service", default="reviews")
    parser.add_argument("--drain", type=float, default=1.0)
    sys.exit(asyncio.run(main(parser.parse_args())))
