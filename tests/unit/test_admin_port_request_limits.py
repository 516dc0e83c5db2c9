"""The mesh admin port reads at most a small request body (issue 25): a
scrape sends none, and a Content-Length of a terabyte must be refused with
413 and the connection closed, not buffered. A real DiagnosticsServer on
127.0.0.1:0, spoken to over a real socket."""

from __future__ import annotations

import asyncio

from proxyless_mesh.diagnostics import DiagnosticsServer

HUGE = b"POST /stats/prometheus HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000\r\n\r\n"
SCRAPE = b"GET /stats/prometheus HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


async def _exchange(address: str, request: bytes) -> bytes:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)  # until the server closes
    finally:
        writer.close()


async def test_a_huge_request_body_is_refused_and_the_connection_closed() -> None:
    server = DiagnosticsServer(None, None, stats=lambda: "# the stats\n")  # type: ignore[arg-type]
    address = await server.start("127.0.0.1:0")
    try:
        refused = await _exchange(address, HUGE)
        assert refused.startswith(b"HTTP/1.1 413 "), refused
        answered = await _exchange(address, SCRAPE)
        assert answered.startswith(b"HTTP/1.1 200 OK"), answered
        assert answered.endswith(b"# the stats\n")
    finally:
        await server.stop()
