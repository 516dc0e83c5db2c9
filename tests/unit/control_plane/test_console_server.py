"""The console on the admin port, over real sockets: its pages are served from
package data and load nothing from elsewhere; /api/graph says what is missing
when it cannot ask a Prometheus; the server awaits views that are coroutines."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from mesh_control_plane.admin import JsonHttpServer
from mesh_control_plane.app import ControlPlane

PAGES = ("/console/graph", "/console/status", "/console/simulate")


async def admin_of(plane: ControlPlane) -> str:
    addresses = await plane.start("127.0.0.1:0", "127.0.0.1:0")
    return f"http://{addresses.admin}"


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[str]:
    plane = ControlPlane(tmp_path, poll_interval=0.02)
    yield await admin_of(plane)
    await plane.stop(grace=0)


async def test_pages_and_assets_are_served_and_reference_only_the_admin_port(admin: str) -> None:
    async with httpx.AsyncClient(base_url=admin) as http:
        for path in ("/", "/console", *PAGES):
            page = await http.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert "<nav>" in page.text
            # no CDN: every src/href is a path on this server
            for link in re.findall(r'(?:src|href)="([^"]+)"', page.text):
                assert link.startswith("/console/"), (path, link)
        script = await http.get("/console/console.js")
        assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert "function drawGraph" in script.text
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", script.text)
        style = await http.get("/console/console.css")
        assert style.headers["content-type"] == "text/css; charset=utf-8"


async def test_graph_without_prometheus_says_which_flag(admin: str) -> None:
    async with httpx.AsyncClient(base_url=admin) as http:
        answer = await http.get("/api/graph")
    assert answer.status_code == 503
    assert "--prometheus-url" in answer.json()["error"]


async def test_graph_with_unreachable_prometheus_is_a_bad_gateway(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on (bound, never listening)
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        plane = ControlPlane(tmp_path, poll_interval=0.02, prometheus_url=url)
        try:
            async with httpx.AsyncClient(base_url=await admin_of(plane)) as http:
                answer = await http.get("/api/graph")
                bad_window = await http.get("/api/graph", params={"window": "1m] or vector(1"})
        finally:
            await plane.stop(grace=0)
    assert answer.status_code == 502
    assert url in answer.json()["error"]
    assert bad_window.status_code == 400
    assert "window" in bad_window.json()["error"]


async def test_a_view_that_awaits_does_not_block_the_others() -> None:
    release = asyncio.Event()

    async def slow() -> dict[str, str]:
        await release.wait()
        return {"slow": "done"}

    server = JsonHttpServer({"/fast": lambda: {"fast": "yes"}}, {"/slow": lambda q: slow()})
    port = await server.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            pending = asyncio.ensure_future(http.get("/slow"))
            assert (await http.get("/fast")).json() == {"fast": "yes"}  # while /slow waits
            assert not pending.done()
            release.set()
            assert (await pending).json() == {"slow": "done"}
    finally:
        await server.stop()
