"""Route matching and weighted choice, as Envoy defines them."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from proxyless_mesh.model import (
    HeaderMatcher,
    MatchKind,
    PathMatcher,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    StringMatcher,
    VirtualHost,
    WeightedCluster,
)
from proxyless_mesh.routing import compile_virtual_host, find_virtual_host


def lookup(headers: dict[str, str]):  # type: ignore[no-untyped-def]
    return headers.get


def compile_route_match(match: RouteMatch):  # type: ignore[no-untyped-def]
    """The table's own (native) matcher over one route with this match."""
    only = Route("only", match, RouteAction((WeightedCluster("c", 1),)))
    table = compile_virtual_host(VirtualHost("h", ("h",), (only,)))
    return lambda path, method, headers: table.first_match(path, method, headers) is not None


def prefix(value: str, **kw: bool) -> RouteMatch:
    return RouteMatch(PathMatcher(MatchKind.PREFIX, value, **kw))


@pytest.mark.parametrize(
    ("matcher", "path", "expected"),
    [
        (PathMatcher(MatchKind.PREFIX, "/api"), "/api/v1", True),
        (PathMatcher(MatchKind.PREFIX, "/api"), "/ap", False),
        (PathMatcher(MatchKind.PREFIX, "/API", case_sensitive=False), "/api/x", True),
        (PathMatcher(MatchKind.EXACT, "/ratings"), "/ratings", True),
        (PathMatcher(MatchKind.EXACT, "/ratings"), "/ratings/1", False),
        (PathMatcher(MatchKind.EXACT, "/Ratings", case_sensitive=False), "/rAtings", True),
        (PathMatcher(MatchKind.REGEX, r"/items/\d+"), "/items/42", True),
        # A regex must match the whole path, not a part of it (Envoy full match).
        (PathMatcher(MatchKind.REGEX, r"/items/\d+"), "/items/42/extra", False),
        (PathMatcher(MatchKind.REGEX, r"/items/\d+"), "/x/items/42", False),
    ],
)
def test_path_matchers(matcher: PathMatcher, path: str, expected: bool) -> None:
    predicate = compile_route_match(RouteMatch(matcher))
    assert predicate(path, "GET", lookup({})) is expected


def test_header_matchers_all_must_hold() -> None:
    match = RouteMatch(
        PathMatcher(MatchKind.PREFIX, "/"),
        headers=(
            HeaderMatcher("x-user", StringMatcher(MatchKind.EXACT, "jason")),
            HeaderMatcher("x-env", StringMatcher(MatchKind.PREFIX, "prod")),
        ),
    )
    predicate = compile_route_match(match)
    assert predicate("/", "GET", lookup({"x-user": "jason", "x-env": "prod-eu"}))
    assert not predicate("/", "GET", lookup({"x-user": "jason"}))
    assert not predicate("/", "GET", lookup({"x-user": "bob", "x-env": "prod"}))


def test_method_is_the_method_pseudo_header() -> None:
    match = RouteMatch(
        PathMatcher(MatchKind.PREFIX, "/"),
        headers=(HeaderMatcher(":method", StringMatcher(MatchKind.EXACT, "POST")),),
    )
    predicate = compile_route_match(match)
    assert predicate("/", "POST", lookup({}))
    assert not predicate("/", "GET", lookup({}))


def test_inverted_header_matches_when_absent() -> None:
    match = RouteMatch(
        PathMatcher(MatchKind.PREFIX, "/"),
        headers=(HeaderMatcher("x-canary", StringMatcher(MatchKind.PRESENT), invert=True),),
    )
    predicate = compile_route_match(match)
    assert predicate("/", "GET", lookup({}))
    assert not predicate("/", "GET", lookup({"x-canary": "1"}))


def route(name: str, match: RouteMatch, *clusters: tuple[str, int]) -> Route:
    return Route(
        name,
        match,
        RouteAction(tuple(WeightedCluster(c, w) for c, w in clusters)),
    )


def test_first_matching_route_wins_and_no_match_is_none() -> None:
    table = compile_virtual_host(
        VirtualHost(
            "svc",
            ("svc:80",),
            (
                route("exact", RouteMatch(PathMatcher(MatchKind.EXACT, "/a")), ("c-exact", 1)),
                route("prefix", prefix("/a"), ("c-prefix", 1)),
            ),
        )
    )
    chosen = table.pick("/a", "GET", lookup({}))
    assert chosen is not None and chosen.cluster == "c-exact"
    chosen = table.pick("/ab", "GET", lookup({}))
    assert chosen is not None and chosen.cluster == "c-prefix"
    assert table.pick("/b", "GET", lookup({})) is None


def test_non_forwarding_route_is_no_route() -> None:
    table = compile_virtual_host(
        VirtualHost("svc", ("*",), (Route("redirect", prefix("/"), None),))
    )
    assert table.pick("/", "GET", lookup({})) is None


def test_weighted_split_follows_weights() -> None:
    """80/20 over 20,000 draws: each share within 1.5 points (about 5 sigma)."""
    random.seed(7)
    table = compile_virtual_host(
        VirtualHost("svc", ("*",), (route("split", prefix("/"), ("v1", 80), ("v2", 20)),))
    )
    counts = Counter(table.pick("/", "GET", lookup({})).cluster for _ in range(20_000))  # type: ignore[union-attr]
    assert abs(counts["v1"] / 20_000 - 0.80) < 0.015
    assert abs(counts["v2"] / 20_000 - 0.20) < 0.015


def test_zero_weight_cluster_never_chosen() -> None:
    table = compile_virtual_host(
        VirtualHost("svc", ("*",), (route("split", prefix("/"), ("v1", 0), ("v2", 100)),))
    )
    assert {table.pick("/", "GET", lookup({})).cluster for _ in range(500)} == {"v2"}  # type: ignore[union-attr]


def test_virtual_host_domain_precedence() -> None:
    def vh(name: str, *domains: str) -> VirtualHost:
        return VirtualHost(name, domains, ())

    config = RouteConfiguration(
        "rc",
        (
            vh("any", "*"),
            vh("prefix", "reviews.*"),
            vh("suffix", "*.mesh:8080"),
            vh("exact", "reviews.default.mesh:8080"),
        ),
    )
    assert find_virtual_host(config, "reviews.default.mesh:8080").name == "exact"  # type: ignore[union-attr]
    assert find_virtual_host(config, "Ratings.default.MESH:8080").name == "suffix"  # type: ignore[union-attr]
    assert find_virtual_host(config, "reviews.other:1").name == "prefix"  # type: ignore[union-attr]
    assert find_virtual_host(config, "x:1").name == "any"  # type: ignore[union-attr]
    assert find_virtual_host(RouteConfiguration("rc", (vh("e", "a:1"),)), "b:1") is None
