"""Route matching and the weighted split in plain Python: the reference the
native `RouteMatcher` is held to; not shipped.

Envoy's RouteMatch: the path is matched without the query string, regexes
match the whole value, a header seen several times is matched against its
values joined with ",", `:method` is the method, and an inverted header
matcher matches when the inner one does not (the header absent included)."""

from __future__ import annotations

import bisect
from collections.abc import Callable

from proxyless_mesh.model import PathMatcher, RouteMatch, StringMatcher
from proxyless_mesh.routing import CompiledRoute, HeaderLookup, RouteDecision, RouteTable
from proxyless_mesh.routing._matching import compile_header_matcher, compile_string_matcher

RequestPredicate = Callable[[str, str, HeaderLookup], bool]


def path_predicate(p: PathMatcher) -> Callable[[str], bool]:
    return compile_string_matcher(StringMatcher(p.kind, p.value, not p.case_sensitive))


def route_predicate(match: RouteMatch) -> RequestPredicate:
    path_ok = path_predicate(match.path)
    checks = tuple(compile_header_matcher(h) for h in match.headers)

    def predicate(path: str, method: str, lookup: HeaderLookup) -> bool:
        return path_ok(path) and all(check(lookup, method) for check in checks)

    return predicate


def choose(route: CompiledRoute, rand: float) -> RouteDecision:
    """The weighted choice: `bisect_right(cumulative, rand * total)`, capped."""
    choices = route.choices
    if len(choices) == 1:
        return choices[0]
    index = bisect.bisect_right(route.cumulative, rand * route.total)
    return choices[min(index, len(choices) - 1)]


def pick_with(
    table: RouteTable, path: str, method: str, lookup: HeaderLookup, rand: float
) -> RouteDecision | None:
    """The first matching route's decision, None when none matches or it
    does not forward."""
    for route in table.routes:
        if route_predicate(route.match)(path, method, lookup):
            return choose(route, rand) if route.forwards else None
    return None
