"""A meshed mTLS backend for the certificate-rotation chaos scenario.

    python mtls_backend.py --bootstrap B --status-file S --ready-file F

Serves 200 "ok" with the mesh's rotating server credentials, PeerAuthentication
STRICT (a plaintext request is refused), on 127.0.0.1 and a free port written
to the ready file. After its first certificate and after every rotation it
rewrites the status file (atomically): {"rotations": n, "roots": [subjects],
"leaf_issuer": subject}, so the scenario can tell that this side went through
leaf renewals and the root rotation. Its own process, so the load generator,
the client and the servers do not share one interpreter's CPU. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.security import Certificate, Credentials
from proxyless_mesh.serving import asgi_config


def write_atomically(path: Path, payload: dict[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)  # the reader never sees half a file


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _x509(cert: Certificate) -> x509.Certificate:
    return x509.load_der_x509_certificate(cert.der)


def describe(creds: Credentials, rotations: int) -> dict[str, object]:
    return {
        "rotations": rotations,
        "roots": sorted(_x509(r).subject.rfc4514_string() for r in creds.roots),
        "leaf_issuer": _x509(creds.leaf).issuer.rfc4514_string(),
    }


async def main(args: argparse.Namespace) -> None:
    status = Path(args.status_file)
    async with Mesh(Bootstrap.from_file(args.bootstrap)) as mesh:
        manager = mesh.identity_manager
        if manager is None:
            raise SystemExit("the bootstrap names no CA: no workload identity")
        rotations = 0

        def record(creds: Credentials) -> None:
            nonlocal rotations
            rotations += 1
            write_atomically(status, describe(creds, rotations))

        write_atomically(status, describe(manager.credentials, 0))
        manager.add_listener(record)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(asgi_config(ok_app, mesh, mode="STRICT", log_level="warning"))
        # uvicorn handles SIGTERM while it serves and re-raises it once stopped: this
        # handler (restored then) makes that harmless, so the mesh closes cleanly.
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGTERM, lambda: setattr(server, "should_exit", True)
        )
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        write_atomically(Path(args.ready_file), {"port": sock.getsockname()[1]})
        await serving


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--status-file", required=True)
    parser.add_argument("--ready-file", required=True)
    asyncio.run(main(parser.parse_args()))
