"""Route tables: which virtual host serves an authority, which route a
request takes, and which weighted cluster it goes to.

A `RouteTable` is built once per config update from a model
RouteConfiguration; `RouteTable.pick()` is the per-request entry point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxyless_mesh.model import Route, RouteConfiguration, RouteMatch, VirtualHost
from proxyless_mesh.routing._matching import HeaderLookup
from proxyless_mesh.routing._native import native_matcher, route_spec


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """What routing decided for one request: the route's name, the chosen
    cluster ("" for a redirect or a direct response), the route timeout (seconds or None), and the
    route itself (retries, faults, rewrites, headers, redirect)."""

    route_name: str
    cluster: str
    timeout: float | None
    route: Route | None = None


class CompiledRoute:
    """One route, ready for the native matcher: its match, and its weighted
    clusters as cumulative weights with one decision object per cluster."""

    __slots__ = ("choices", "clusters", "cumulative", "match", "name", "timeout", "total")

    def __init__(
        self,
        name: str,
        match: RouteMatch,
        clusters: tuple[tuple[str, int], ...],
        timeout: float | None,
        route: Route | None = None,
    ) -> None:
        self.name = name
        self.match = match
        self.clusters = clusters
        self.timeout = timeout
        live = [(c, w) for c, w in clusters if w > 0]
        cumulative: list[int] = []
        total = 0
        for _, weight in live:
            total += weight
            cumulative.append(total)
        self.cumulative = cumulative
        self.total = total
        # One decision object per cluster, made here so a request allocates none.
        self.choices = tuple(RouteDecision(name, c, timeout, route) for c, _ in live)
        answers = route is not None and (
            route.redirect is not None or route.direct_response is not None
        )
        if not live and answers:
            self.choices = (RouteDecision(name, "", None, route),)
            self.cumulative = [1]
            self.total = 1

    @property
    def forwards(self) -> bool:
        return bool(self.choices)


class RouteTable:
    """The routes of the virtual host that serves one authority.

    `pick(path, method, lookup)` is the first matching route's decision
    (Envoy: routes are tried in order), None when no route matches or the
    matching route does not forward (NR): the native matcher's, one crossing
    (routing/_native.py)."""

    __slots__ = ("native", "pick", "pick_with", "routes", "virtual_host")

    def __init__(self, virtual_host: str, routes: tuple[CompiledRoute, ...]) -> None:
        self.virtual_host = virtual_host
        self.routes = routes
        self.native: Any = native_matcher(
            [route_spec(r.match, r.cumulative, r.total, r.choices) for r in routes]
        )
        self.pick: Callable[[str, str, HeaderLookup], RouteDecision | None] = self.native.pick
        #: `pick` with the weighted split's uniform draw in [0, 1) given.
        self.pick_with: Callable[[str, str, HeaderLookup, float], RouteDecision | None] = (
            self.native.pick_with
        )

    def first_match(self, path: str, method: str, lookup: HeaderLookup) -> CompiledRoute | None:
        """The first route whose match holds, forwarding or not (simulate)."""
        index = self.native.first_match(path, method, lookup)
        return None if index is None else self.routes[index]

    def referenced_clusters(self) -> frozenset[str]:
        return frozenset(c for r in self.routes for c, w in r.clusters if w > 0)


def compile_virtual_host(vhost: VirtualHost) -> RouteTable:
    routes = tuple(
        CompiledRoute(
            name=r.name,
            match=r.match,
            clusters=tuple((c.name, c.weight) for c in r.action.clusters) if r.action else (),
            timeout=r.action.timeout if r.action else None,
            route=r,
        )
        for r in vhost.routes
    )
    return RouteTable(vhost.name, routes)


def find_virtual_host(config: RouteConfiguration, authority: str) -> VirtualHost | None:
    """Envoy's domain search: exact, then longest suffix wildcard (`*.x`),
    then longest prefix wildcard (`x.*`), then `*`. Case-insensitive."""
    authority = authority.lower()
    best: tuple[int, int, VirtualHost] | None = None  # (rank, length, vhost); lower rank wins
    for vhost in config.virtual_hosts:
        for domain in vhost.domains:
            d = domain.lower()
            if d == authority:
                return vhost
            if d == "*":
                candidate = (3, 0, vhost)
            elif d.startswith("*") and authority.endswith(d[1:]) and len(authority) > len(d) - 1:
                candidate = (1, -len(d), vhost)
            elif d.endswith("*") and authority.startswith(d[:-1]) and len(authority) > len(d) - 1:
                candidate = (2, -len(d), vhost)
            else:
                continue
            if best is None or candidate[:2] < best[:2]:
                best = candidate
    return best[2] if best else None
