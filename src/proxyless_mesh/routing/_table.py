"""Route tables: which virtual host serves an authority, which route a
request takes, and which weighted cluster it goes to.

A `RouteTable` is built once per config update from a model
RouteConfiguration; `RouteTable.pick()` is the per-request entry point.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

from proxyless_mesh.model import Route, RouteConfiguration, VirtualHost
from proxyless_mesh.routing._matching import HeaderLookup, RequestPredicate, compile_route_match


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

    __slots__ = ("_choices", "_cumulative", "_total", "clusters", "matches", "name", "timeout")

    def __init__(
        self,
        name: str,
        matches: RequestPredicate,
        clusters: tuple[tuple[str, int], ...],
        timeout: float | None,
        route: Route | None = None,
    ) -> None:
        self.name = name
        self.matches = matches
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
    """The routes of the virtual host that serves one authority."""

    __slots__ = ("_rand", "routes", "virtual_host")

    def __init__(self, virtual_host: str, routes: tuple[CompiledRoute, ...]) -> None:
        self.virtual_host = virtual_host
        self.routes = routes
        self._rand = random.random

    def pick(self, path: str, method: str, lookup: HeaderLookup) -> RouteDecision | None:
        """First matching route (Envoy: routes are tried in order); None when no
        route matches or the matching route does not forward (NR)."""
        for route in self.routes:
            if route.matches(path, method, lookup):
                if not route.forwards:
                    return None
                return route.choose(self._rand())
        return None

    def referenced_clusters(self) -> frozenset[str]:
        return frozenset(c for r in self.routes for c, w in r.clusters if w > 0)


def compile_virtual_host(vhost: VirtualHost) -> RouteTable:
    routes = tuple(
        CompiledRoute(
            name=r.name,
            matches=compile_route_match(r.match),
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
