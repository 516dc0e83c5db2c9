"""Rotation under load (~30 s): leaf certificates of 10 s renewed every 4-5 s
on both sides, and a root rotation (SIGUSR1 to the control plane) that
completes inside the run: the new root joins the bundle, signs 10 s later,
and the old root leaves 10 s after that. Steady mTLS traffic throughout,
new connections opened all the time, and not one request may fail."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from meshlab import LocalMesh

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.integrations._tls_transport import TlsTransports
from proxyless_mesh.model import UpstreamTls
from proxyless_mesh.security import Credentials
from proxyless_mesh.serving import asgi_config

REVIEWS = "spiffe://cluster.local/ns/shop/sa/reviews"
FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend"
LEAF_TTL = 10.0
RUN = 30.0


@pytest.fixture
def server(lab: LocalMesh) -> Iterator[tuple[Mesh, Mesh, int]]:
    lab.start_control_plane(extra_args=["--leaf-ttl", f"{LEAF_TTL:g}s"])
    frontend = Mesh(
        Bootstrap.from_file(
            lab.bootstrap("fe-1", "shop", "frontend", token=lab.token("shop", "frontend"))
        )
    )
    reviews = Mesh(
        Bootstrap.from_file(
            lab.bootstrap("rv-1", "shop", "reviews", token=lab.token("shop", "reviews"))
        )
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    with frontend, reviews:
        uv = uvicorn.Server(asgi_config(app, reviews, mode="STRICT", log_level="warning"))
        thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            yield frontend, reviews, sock.getsockname()[1]
        finally:
            uv.should_exit = True
            thread.join(10)
            sock.close()


@pytest.mark.timeout(120)
def test_leaf_and_root_rotation_under_load(lab: LocalMesh, server: tuple[Mesh, Mesh, int]) -> None:
    frontend, reviews, port = server
    rotations: dict[str, list[Credentials]] = {"frontend": [], "reviews": []}
    for name, mesh in (("frontend", frontend), ("reviews", reviews)):
        manager = mesh.identity_manager
        assert manager is not None
        rotations[name].append(manager.credentials)
        manager.add_listener(rotations[name].append)
    first_roots = set(frontend.credentials().roots)
    transport = TlsTransports(frontend).for_cluster(UpstreamTls((REVIEWS,)))
    assert transport is not None and lab.control_plane is not None
    failures: list[str] = []
    ok = 0
    start = time.monotonic()
    rotated = False
    with httpx.Client(transport=transport, timeout=5.0) as client:
        while (elapsed := time.monotonic() - start) < RUN:
            if not rotated and elapsed > 2.0:
                os.kill(lab.control_plane.popen.pid, signal.SIGUSR1)
                rotated = True
            # Every 5th request on a fresh connection: handshakes all along.
            headers = {"connection": "close"} if ok % 5 == 0 else {}
            try:
                response = client.get(f"http://127.0.0.1:{port}/r", headers=headers)
            except httpx.HTTPError as exc:
                failures.append(f"{elapsed:.1f}s {type(exc).__name__}: {exc}")
            else:
                if response.status_code == 200:
                    ok += 1
                else:
                    failures.append(f"{elapsed:.1f}s status {response.status_code}")
            time.sleep(0.02)  # steady ~40 requests/s, not a busy loop

    assert failures == []
    assert ok > 200  # ~15-40 requests/s on a shared 2-core machine
    for name, seen in rotations.items():
        assert len(seen) >= 5, (name, len(seen))  # the first certificate + 4 renewals
    # The root rotation went all the way: the new root signs the current
    # leaves and the old root has left both workloads' bundles.
    final_roots = set(frontend.credentials().roots)
    assert final_roots and not (final_roots & first_roots)
    for mesh in (frontend, reviews):
        leaf = x509.load_der_x509_certificate(mesh.credentials().leaf.der)
        assert any(
            leaf.issuer == x509.load_der_x509_certificate(root.der).subject for root in final_roots
        )
    log = lab.control_plane.log.read_text()
    assert "root rotation requested by SIGUSR1" in log
