"""The loopback servers every data-path row talks to: 1 KB in, 1 KB out.

    python benchmarks/servers.py --kind http --ready-file F   # ASGI app under uvicorn
    python benchmarks/servers.py --kind grpc --ready-file F   # unary /bench.Bench/Echo
    python benchmarks/servers.py --kind http --mesh-bootstrap B  # the same app, mesh mTLS (STRICT)
    python benchmarks/servers.py --kind http --status 503     # an outage; GET /count: requests seen

Istio's published latency figures use 1 KB payloads; the example backend
answers ~100 bytes of JSON, so the benchmark has servers of its own rather
than a flag on the example. Each binds 127.0.0.1 on a free port and writes
{"port": N, "pid": P} to the ready file once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
from concurrent import futures
from typing import Any

PAYLOAD = b"x" * 1024
GRPC_METHOD = "/bench.Bench/Echo"

Scope = dict[str, Any]


STATUS = [200]  # --status: what every answer says (an outage answers 503)
SEEN = [0]  # requests answered, for GET /count


async def app(scope: Scope, receive: Any, send: Any) -> None:
    """Drain the request body, answer 1 KB. Nothing else: the server's cost must
    be the same small constant under every row."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if scope["path"] == "/count":
        body = str(SEEN[0]).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    SEEN[0] += 1
    await send(
        {
            "type": "http.response.start",
            "status": STATUS[0],
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", b"1024"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": PAYLOAD})


def write_ready(path: str | None, port: int) -> None:
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"port": port, "pid": os.getpid()}, f)
    os.replace(tmp, path)


async def serve_http(ready_file: str | None, mesh_bootstrap: str | None) -> None:
    """Plaintext, or with `mesh_bootstrap` (naming the CA and a join token) mesh
    mTLS, STRICT, through the library's uvicorn protocol (proxyless_mesh.serving)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by accepted sockets: a response written in two pieces must not
    # wait for the client's delayed ACK (~40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    config: uvicorn.Config
    if mesh_bootstrap is None:
        config = uvicorn.Config(app, log_level="warning", access_log=False, http="httptools")
    else:
        from proxyless_mesh import Mesh
        from proxyless_mesh.serving import asgi_config

        # Its own thread and loop (sync start): the identity's renewals and the
        # xDS stream stay off the loop that serves requests. Lives as long as
        # the process.
        mesh = Mesh.from_bootstrap(mesh_bootstrap)
        mesh.start()
        config = asgi_config(
            app, mesh, mode="STRICT", log_level="warning", access_log=False, http="httptools"
        )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    write_ready(ready_file, sock.getsockname()[1])
    await task


def serve_grpc(ready_file: str | None) -> None:
    import grpc

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return PAYLOAD

    handler = grpc.method_handlers_generic_handler(
        "bench.Bench", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    write_ready(ready_file, port)
    server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=("http", "grpc"), required=True)
    parser.add_argument("--ready-file")
    parser.add_argument("--mesh-bootstrap", help="HTTP: serve mesh mTLS with this identity")
    parser.add_argument("--status", type=int, default=200, help="HTTP: the answer's status")
    args = parser.parse_args()
    STATUS[0] = args.status
    if args.kind == "http":
        # Every row's server (baseline, mesh, behind Envoy) runs the same loop:
        # uvloop where installed, as the mesh's own server helpers prefer.
        try:
            import uvloop
        except ImportError:
            asyncio.run(serve_http(args.ready_file, args.mesh_bootstrap))
        else:
            uvloop.run(serve_http(args.ready_file, args.mesh_bootstrap))
    else:
        serve_grpc(args.ready_file)


if __name__ == "__main__":
    main()
