"""A per-try timeout bounds the whole try, body included, in both transports
(issue 18): a real server on 127.0.0.1 answers its head at once and then
stalls the body; the caller's read must fail with UpstreamTimeoutError within
perTryTimeout plus a stated slack, not after httpx's own read timeout."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from meshlab import LocalMesh, service_entry

from proxyless_mesh import Mesh
from proxyless_mesh.errors import UpstreamTimeoutError

HOST = "stall.default.mesh"
URL = f"http://{HOST}:8080/"
PER_TRY = 0.5
# Scheduling on a shared 2-core machine; the client's own read timeout (10 s)
# is far above PER_TRY + SLACK, so passing means the per-try bound fired.
SLACK = 0.5
CLIENT_TIMEOUT = 10.0


class StallingServer:
    """HTTP/1.1 on a real socket: sends a head promising 1,000 bytes, sends
    10 of them, then holds the connection open without sending more."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.connections: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10)
        self.stop.wait()  # the rest of the body never comes

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for conn in self.connections:
            conn.close()
        self.thread.join(timeout=5)


@pytest.fixture
def stalling() -> Iterator[StallingServer]:
    server = StallingServer()
    try:
        yield server
    finally:
        server.close()


def _configure(lab: LocalMesh, port: int) -> None:
    lab.write_config("stall.yaml", service_entry(HOST, 8080, [("127.0.0.1", port, {})]))
    route = {
        "route": [{"destination": {"host": HOST}}],
        "retries": {"attempts": 1, "perTryTimeout": f"{PER_TRY}s", "retryOn": "5xx"},
    }
    spec = {"hosts": [HOST], "http": [route]}
    meta = {"name": "stall", "namespace": "default"}
    lab.write_config(
        "route.yaml",
        json.dumps(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": meta,
                "spec": spec,
            }
        ),
    )
    lab.start_control_plane()


def test_sync_per_try_timeout_bounds_a_stalled_body(
    lab: LocalMesh, stalling: StallingServer
) -> None:
    _configure(lab, stalling.port)
    with (
        Mesh.from_bootstrap(lab.bootstrap("c"), preload=[f"{HOST}:8080"]) as mesh,
        httpx.Client(transport=mesh.httpx_transport(), timeout=CLIENT_TIMEOUT) as client,
    ):
        started = time.monotonic()
        with pytest.raises(UpstreamTimeoutError) as caught:
            client.get(URL)
        elapsed = time.monotonic() - started
    assert PER_TRY * 0.9 <= elapsed <= PER_TRY + SLACK, elapsed
    assert caught.value.flags == ("UT",)
    assert "per-try timeout of 0.5s" in str(caught.value)


async def test_async_per_try_timeout_bounds_a_stalled_body(
    lab: LocalMesh, stalling: StallingServer
) -> None:
    _configure(lab, stalling.port)
    async with Mesh.from_bootstrap(lab.bootstrap("c"), preload=[f"{HOST}:8080"]) as mesh:
        transport = mesh.async_httpx_transport()
        async with httpx.AsyncClient(transport=transport, timeout=CLIENT_TIMEOUT) as client:
            started = asyncio.get_running_loop().time()
            with pytest.raises(UpstreamTimeoutError) as caught:
                await client.get(URL)
            elapsed = asyncio.get_running_loop().time() - started
    assert PER_TRY * 0.9 <= elapsed <= PER_TRY + SLACK, elapsed
    assert caught.value.flags == ("UT",)
