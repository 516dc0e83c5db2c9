"""The web console on the admin port: three pages and the JSON they read.

Pages (plain HTML and one script, package data, nothing fetched from
elsewhere): `/console/graph`, `/console/status`, `/console/simulate`. Their
data: `/api/graph` (asks the user's Prometheus, `--prometheus-url`), `/status`
(what `meshctl status` prints) and `/simulate` (what `meshctl simulate`
prints). The pages only read: nothing on the console changes the mesh.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

import httpx

from mesh_control_plane.admin.graph import build_graph, graph_queries, valid_window
from mesh_control_plane.admin.server import HttpError, TextResponse

__all__ = ["PrometheusClient", "console_pages", "graph_view"]

_STATIC = resources.files("mesh_control_plane.admin") / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
_PAGES = ("graph", "status", "simulate")  # sections of console.html, chosen by path
_ASSETS = ("console.js", "console.css")


def _static(name: str) -> TextResponse:
    suffix = name[name.rindex(".") :]
    return TextResponse((_STATIC / name).read_text(encoding="utf-8"), _TYPES[suffix])


def console_pages() -> dict[str, Callable[[], TextResponse]]:
    """Routes of the pages and their assets; `/` and `/console` open the graph."""
    page = functools.partial(_static, "console.html")
    routes: dict[str, Callable[[], TextResponse]] = {f"/console/{p}": page for p in _PAGES}
    for asset in _ASSETS:
        routes[f"/console/{asset}"] = functools.partial(_static, asset)
    routes["/"] = routes["/console"] = page
    return routes


class PrometheusClient:
    """Instant queries over Prometheus' HTTP API (`/api/v1/query`)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout

    async def query(self, client: httpx.AsyncClient, promql: str) -> list[dict[str, Any]]:
        """The result vector; HttpError(502) naming Prometheus' answer otherwise."""
        try:
            answer = await client.get(f"{self.url}/api/v1/query", params={"query": promql})
            payload = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise HttpError(502, f"Prometheus at {self.url}: {exc!r}") from None
        if answer.status_code != 200 or payload.get("status") != "success":
            error = payload.get("error", answer.text[:200])
            raise HttpError(502, f"Prometheus at {self.url} answered {answer.status_code}: {error}")
        return list(payload["data"]["result"])

    async def graph(self, window: str) -> dict[str, Any]:
        queries = graph_queries(window)
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            rates, into_service, into_workload = await asyncio.gather(
                self.query(client, queries.rates),
                self.query(client, queries.p99_into_service),
                self.query(client, queries.p99_into_workload),
            )
        return {
            "prometheus": self.url,
            "window": window,
            **build_graph(rates, into_service, into_workload),
        }


def graph_view(
    prometheus: PrometheusClient | None, query: Mapping[str, str]
) -> Awaitable[dict[str, Any]]:
    """`GET /api/graph[?window=1m]`: the service graph of the last `window`.
    503 without `--prometheus-url`, 400 for a window that is not a range."""
    if prometheus is None:
        raise HttpError(
            503,
            "no Prometheus to read the graph from: start the control plane with "
            "--prometheus-url http://HOST:9090 (a Prometheus scraping the workloads)",
        )
    window = query.get("window", "1m")
    if not valid_window(window):
        raise HttpError(400, f"window must look like 30s, 1m or 2h, got {window!r}")
    return prometheus.graph(window)
