"""The Mesh's local admin endpoint: CSDS over gRPC and Istio's metrics over
HTTP on one port, bound only when asked.

`Mesh(..., admin_address="127.0.0.1:0")` starts one `DiagnosticsServer` on
the mesh's own event loop, beside the xDS client it reports on, so reading
the client's status needs no lock. On that port:

- gRPC (HTTP/2): `envoy.service.status.v3.ClientStatusDiscoveryService`
  (the service `grpcio-csds` adds to a grpcio server): `meshctl config-dump
  NODE --csds HOST:PORT` and any CSDS tool can see what this process believes;
- HTTP/1.1 `GET /stats/prometheus`: Istio's request metrics as the native
  core keeps them, the path Prometheus scrapes on an Envoy sidecar.

A connection is told apart by its first bytes (HTTP/2's preface starts with
`PRI`): gRPC ones are relayed to a grpc.aio server on a loopback port of its
own, the rest are answered here. Off by default: an endpoint that reveals
configuration is the operator's choice, and it is meant for loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from proxyless_mesh.errors import MeshError
from proxyless_mesh.xds_client import XdsClient, build_node, client_config

__all__ = ["PROMETHEUS_CONTENT_TYPE", "STATS_PATH", "CsdsServicer", "DiagnosticsServer"]

_USER_AGENT = "proxyless-mesh"
#: Envoy's and Istio's scrape path.
STATS_PATH = "/stats/prometheus"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_HTTP2_PREFACE = b"PRI"
_MAX_HEAD = 16 * 1024
# A request body is read and dropped (scrapes send none); a larger one is refused.
_MAX_BODY = 16 * 1024


class CsdsServicer(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):  # type: ignore[misc]
    """Answers every request with the one ClientConfig `source()` builds now.

    A process holds one xDS client, so node matchers are not consulted: there
    is nothing else to choose from (grpcio's CSDS does the same).
    """

    def __init__(self, source: Callable[[], Any]) -> None:
        self._source = source

    async def FetchClientStatus(self, request: Any, context: Any) -> Any:  # gRPC method name
        return csds_pb2.ClientStatusResponse(config=[self._source()])

    async def StreamClientStatus(  # gRPC method name
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for _ in request_iterator:
            yield csds_pb2.ClientStatusResponse(config=[self._source()])


class DiagnosticsServer:
    """The admin port: CSDS for one xDS client, and `stats()` (the
    Prometheus text) at STATS_PATH.

    Holds the server references (a collected grpc server stops serving).
    """

    def __init__(self, xds: XdsClient, node: Any, stats: Callable[[], str] | None = None) -> None:
        self._xds = xds
        self._node = node
        self._stats = stats
        self._server: grpc.aio.Server | None = None
        self._grpc_port = 0
        self._front: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.address = ""

    @classmethod
    def for_client(
        cls, xds: XdsClient, bootstrap: Any, stats: Callable[[], str] | None = None
    ) -> DiagnosticsServer:
        """The server for `xds`, reporting the node it sends (from `bootstrap`)."""
        return cls(xds, build_node(bootstrap, _USER_AGENT), stats)

    def client_config(self) -> Any:
        """The ClientConfig served now (also handy in tests and logs)."""
        return client_config(self._node, self._xds.resource_status())

    async def start(self, address: str) -> str:
        """Listen on "HOST:PORT" (port 0 picks one) on the running loop;
        returns the bound "HOST:PORT". MeshError if it cannot bind."""
        host, _, port = address.rpartition(":")
        server = grpc.aio.server()
        csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(
            CsdsServicer(self.client_config), server
        )
        try:
            self._grpc_port = server.add_insecure_port("127.0.0.1:0")
            front = await asyncio.start_server(self._accept, sock=_bound(host, port))
        except (RuntimeError, OSError, ValueError) as exc:  # grpcio says RuntimeError
            raise MeshError(f"cannot bind the mesh admin endpoint on {address}: {exc}") from exc
        await server.start()
        bound = front.sockets[0].getsockname()[1]
        self._server, self._front = server, front
        self.address = f"{host or '127.0.0.1'}:{bound}"
        return self.address

    async def stop(self) -> None:
        """Stop serving; calls and scrapes in flight are cancelled (they are reads)."""
        front, self._front = self._front, None
        if front is not None:
            front.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections)
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(None)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()  # asyncio runs each connection's callback as a task
        if task is not None:
            self._connections.add(task)
        try:
            first = await reader.readexactly(len(_HTTP2_PREFACE))
            if first == _HTTP2_PREFACE:
                await self._relay(first, reader, writer)
            else:
                await self._http(first, reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # the peer went away, or sent a head too large to be a scrape
        except ValueError:
            pass  # not HTTP (a Content-Length that is no number): no answer
        except asyncio.CancelledError:
            pass  # stop(): end quietly (asyncio's stream callback reports a cancelled task)
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _relay(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A gRPC connection: its bytes both ways to the loopback gRPC server."""
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self._grpc_port
        )
        upstream_writer.write(first)
        try:
            pumps = [
                asyncio.ensure_future(_pump(reader, upstream_writer)),
                asyncio.ensure_future(_pump(upstream_reader, writer)),
            ]
            try:  # until both sides closed, or one failed
                await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.wait(pumps)
        finally:
            upstream_writer.close()

    async def _http(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """HTTP/1.1 requests, kept alive until the client closes or asks to."""
        head = first
        while True:
            head += await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_HEAD:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = [*lines[0].split(" "), "", "", ""][:3]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if length > _MAX_BODY:  # a scrape sends no body: refuse it rather than buffer it
                writer.write(
                    b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
                await writer.drain()
                return
            await reader.readexactly(length)
            status, body = await self._answer(method, target.partition("?")[0])
            close = version != "HTTP/1.1" or headers.get("connection", "").lower() == "close"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {PROMETHEUS_CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\n"
                f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode("latin-1")
                + (b"" if method == "HEAD" else body)
            )
            await writer.drain()
            if close:
                return
            head = b""

    async def _answer(self, method: str, path: str) -> tuple[str, bytes]:
        if path != STATS_PATH or self._stats is None:
            return (
                "404 Not Found",
                b"not found: this admin port serves CSDS and /stats/prometheus\n",
            )
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"GET only\n"
        # Rendered off the loop: the native core formats without the GIL.
        return "200 OK", (await asyncio.to_thread(self._stats)).encode()


def _bound(host: str, port: str) -> socket.socket:
    """One listening socket for HOST:PORT: its first address only, so port 0
    is one port even where the name has an IPv4 and an IPv6 address."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]") or None, int(port or 0), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(64 * 1024):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()  # a half-close passed on: the other way may still carry data
