"""A minimal HTTP/1.1 server for JSON endpoints, on asyncio streams.

The admin surface is a handful of GET endpoints read by `meshctl` and by
people with curl (and Prometheus, for `/metrics`); a web framework would be a
dependency for nothing. One request per connection (`Connection: close`)
keeps the parser trivial.

A view is called with no argument, or, when registered in `query_routes`,
with the query parameters. It returns JSON-able data, or a `TextResponse`
for other content types (the console's pages), or an awaitable of either
(a view that asks another server, e.g. Prometheus, must not block the
control plane's event loop); raising `HttpError` answers with that status.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

JsonView = Callable[[], Any]
QueryView = Callable[[Mapping[str, str]], Any]

_READ_TIMEOUT = 10.0
_MAX_HEADER_LINES = 100
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
_JSON = "application/json"


@dataclass(frozen=True)
class TextResponse:
    """A non-JSON body (e.g. Prometheus text) and its content type."""

    body: str
    content_type: str = "text/plain; charset=utf-8"


class HttpError(Exception):
    """Raised by a view: answer `status` with `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        if status not in _REASONS:
            raise ValueError(f"unsupported status {status}")
        super().__init__(message)
        self.status = status
        self.message = message


class JsonHttpServer:
    """Serves `GET <path>` with the JSON of `routes[path]()` (or
    `query_routes[path](query)`); 404 for other paths."""

    def __init__(
        self, routes: Mapping[str, JsonView], query_routes: Mapping[str, QueryView] | None = None
    ) -> None:
        self._routes = dict(routes)
        self._query_routes = dict(query_routes or {})
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self, host: str | None, port: int) -> int:
        """Listen on host:port (None: all interfaces; port 0 picks one); returns the port."""
        self._server = await asyncio.start_server(self._handle, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            status, body = await asyncio.wait_for(self._respond(reader), _READ_TIMEOUT)
            if isinstance(body, TextResponse):
                data, content_type = body.body.encode(), body.content_type
            else:
                data = json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"
                content_type = _JSON
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii") + data)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("admin connection dropped: %r", exc)
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, Any]:
        request_line = (await reader.readline()).decode("latin-1").strip()
        for _ in range(_MAX_HEADER_LINES):  # headers are read and ignored
            if (await reader.readline()) in (b"\r\n", b"\n", b""):
                break
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, {"error": f"malformed request line {request_line!r}"}
        method, target = parts[0], parts[1]
        path, _, query = target.partition("?")
        view = self._routes.get(path)
        query_view = self._query_routes.get(path)
        if query_view is not None:
            params = dict(urllib.parse.parse_qsl(query))
            view = lambda: query_view(params)  # noqa: E731 - one call site, below
        if view is None:
            endpoints = sorted([*self._routes, *self._query_routes])
            return 404, {"error": f"no such endpoint {path}", "endpoints": endpoints}
        if method != "GET":
            return 405, {"error": f"{method} not allowed, use GET"}
        try:
            body = view()
            return 200, (await body) if inspect.isawaitable(body) else body
        except HttpError as exc:
            return exc.status, {"error": exc.message}
