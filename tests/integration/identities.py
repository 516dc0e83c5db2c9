"""Workload identities on a real LocalMesh: the setup the mTLS/authorization
integration tests share (test_inbound_from_xds, test_jwks_uri, test_mtls_serving).

A plain module, not a conftest: each test file keeps its own fixtures and
decides what to start, and these helpers only build the pieces. Everything
here that starts something (the ASGI server thread) is a context manager that
stops it on exit; Meshes are returned unstarted, for the caller's `with`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meshlab import LocalMesh

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.integrations._asgi import tls_peer_principal
from proxyless_mesh.serving import serve_asgi

NAMESPACE = "shop"
FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend"
RATINGS = "spiffe://cluster.local/ns/shop/sa/ratings"
REVIEWS = "spiffe://cluster.local/ns/shop/sa/reviews"
REVIEWS_HOST = "reviews.shop.svc.cluster.local"


def start_control_plane(lab: LocalMesh) -> None:
    """The control plane with its CA, issuing hour-long leaves: no rotation
    can happen mid-test and change which certificate a handshake sees."""
    lab.start_control_plane(extra_args=["--leaf-ttl", "1h"])


def workload_bootstrap(
    lab: LocalMesh, node: str, sa: str, *, credentials_dir: Path | None = None
) -> Path:
    """The bootstrap file of a workload running as service account `sa` in the
    shop namespace, with a fresh join token from the lab's CA (so the CA
    issues it that identity); a path, for workloads in another process."""
    token = lab.token(NAMESPACE, sa)
    return lab.bootstrap(node, NAMESPACE, sa, token=token, credentials_dir=credentials_dir)


def workload_mesh(
    lab: LocalMesh, node: str, sa: str, *, credentials_dir: Path | None = None
) -> Mesh:
    """An unstarted in-process Mesh for `workload_bootstrap`'s workload."""
    return Mesh(
        Bootstrap.from_file(workload_bootstrap(lab, node, sa, credentials_dir=credentials_dir))
    )


def listening_socket() -> socket.socket:
    """Bound (port 0) and listening before the config names its port, so the
    control plane can advertise the endpoint before the server runs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def service_entry(host: str, port: int) -> dict[str, Any]:
    """A mesh-internal ServiceEntry whose one endpoint runs as `reviews`: the
    serviceAccount turns auto mTLS on and earns it an inbound listener."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": host.split(".")[0], "namespace": NAMESPACE},
        "spec": {
            "hosts": [host],
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC",
            "location": "MESH_INTERNAL",
            "endpoints": [
                {"address": "127.0.0.1", "ports": {"http": port}, "serviceAccount": "reviews"}
            ],
        },
    }


async def peer_echo(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app answering with the peer identity the mesh's inbound side verified."""
    if scope["type"] != "http":
        return
    body = (tls_peer_principal(scope) or "plaintext").encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def serving_asgi(app: Any, mesh: Mesh, sock: socket.socket, **options: Any) -> Iterator[None]:
    """serve_asgi on its own loop and thread (the tests' clients are sync),
    cancelled and joined on exit; `options` go to serve_asgi (uvicorn's)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    task: list[asyncio.Task[None]] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        options.setdefault("log_level", "warning")
        coro = serve_asgi(app, mesh, sockets=[sock], lifespan="off", **options)
        task.append(loop.create_task(coro))
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task[0])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(5)
    try:
        yield
    finally:
        loop.call_soon_threadsafe(task[0].cancel)
        thread.join(10)
        loop.close()
