"""Route tables: which virtual host serves an authority, which route a
request takes, and which weighted cluster it goes to.

A `RouteTable` is built once per config update from a model
RouteConfiguration; `RouteTable.pick()` is the per-request entry point.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxyless_mesh.model import Route, RouteConfiguration, RouteMatch, VirtualHost
from proxyless_mesh.routing._matching import HeaderLookup, RequestPredicate, compile_route_match
from proxyless_mesh.routing._native import matcher_class as native_matcher_class
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
    """One route, ready for matching and weighted cluster choice."""

    __slots__ = (
        "_choices",
        "_cumulative",
        "_total",
        "clusters",
        "match",
        "matches",
        "name",
        "timeout",
    )

    def __init__(
        self,
        name: str,
        matches: RequestPredicate,
        clusters: tuple[tuple[str, int], ...],
        timeout: float | None,
        route: Route | None = None,
        match: RouteMatch | None = None,
    ) -> None:
        """`match` is what `matches` was compiled from: the native matcher
        needs it (a route without it keeps its table in Python)."""
        self.name = name
        self.matches = matches
        self.match = match
        self.clusters = clusters
        self.timeout = timeout
        live = [(c, w) for c, w in clusters if w > 0]
        cumulative: list[int] = []
        total = 0
        for _, weight in live:
            total += weight
            cumulative.append(total)
        self._cumulative = cumulative
        self._total = total
        # One decision object per cluster, made here so a request allocates none.
        self._choices = tuple(RouteDecision(name, c, timeout, route) for c, _ in live)
        answers = route is not None and (
            route.redirect is not None or route.direct_response is not None
        )
        if not live and answers:
            self._choices = (RouteDecision(name, "", None, route),)
            self._cumulative = [1]
            self._total = 1

    @property
    def forwards(self) -> bool:
        return bool(self._choices)

    def choose(self, rand: float) -> RouteDecision:
        """Pick a cluster by weight; `rand` is uniform in [0, 1)."""
        choices = self._choices
        if len(choices) == 1:
            return choices[0]
        index = bisect.bisect_right(self._cumulative, rand * self._total)
        return choices[min(index, len(choices) - 1)]


class RouteTable:
    """The routes of the virtual host that serves one authority.

    `pick(path, method, lookup)` is the first matching route's decision
    (Envoy: routes are tried in order), None when no route matches or the
    matching route does not forward (NR). It is the native matcher's when
    the Rust core is built (one crossing), else `pick_with` in Python."""

    __slots__ = ("_rand", "native", "pick", "routes", "virtual_host")

    def __init__(self, virtual_host: str, routes: tuple[CompiledRoute, ...]) -> None:
        self.virtual_host = virtual_host
        self.routes = routes
        self._rand = random.random
        self.native = _native_table(routes)
        self.pick: Callable[[str, str, HeaderLookup], RouteDecision | None] = (
            self.native.pick if self.native is not None else self._pick
        )

    def _pick(self, path: str, method: str, lookup: HeaderLookup) -> RouteDecision | None:
        return self.pick_with(path, method, lookup, self._rand())

    def pick_with(
        self, path: str, method: str, lookup: HeaderLookup, rand: float
    ) -> RouteDecision | None:
        """`pick` in Python, with the weighted split's uniform draw given."""
        for route in self.routes:
            if route.matches(path, method, lookup):
                if not route.forwards:
                    return None
                return route.choose(rand)
        return None

    def referenced_clusters(self) -> frozenset[str]:
        return frozenset(c for r in self.routes for c, w in r.clusters if w > 0)


def _native_table(routes: tuple[CompiledRoute, ...]) -> Any:
    """The native matcher of these routes, or None (no core, or a route
    compiled by hand without its RouteMatch)."""
    if native_matcher_class is None or not routes:
        return None
    specs = []
    for route in routes:
        if route.match is None:
            return None
        specs.append(route_spec(route.match, route._cumulative, route._total, route._choices))
    return native_matcher(specs)


def compile_virtual_host(vhost: VirtualHost) -> RouteTable:
    routes = tuple(
        CompiledRoute(
            name=r.name,
            matches=compile_route_match(r.match),
            clusters=tuple((c.name, c.weight) for c in r.action.clusters) if r.action else (),
            timeout=r.action.timeout if r.action else None,
            route=r,
            match=r.match,
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
