"""Differential test of the native route matcher (issue 25): on generated
virtual hosts and requests, the Rust `RouteMatcher` and the Python reference
(tests/oracles/routing.py) must return the very same RouteDecision object (or
both None) for the same uniform draw. The generators reach every matcher
kind, case folding of non-ASCII text, lone surrogates (Rust cannot read them
as UTF-8), `:method`, inverted and absent headers, zero weights, splits and
routes that answer by themselves."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import routing as oracle
from route_matches import HEADERS, route_matches

from proxyless_mesh.model import (
    DirectResponse,
    MatchKind,
    PathMatcher,
    RedirectAction,
    Route,
    RouteAction,
    RouteMatch,
    VirtualHost,
    WeightedCluster,
)
from proxyless_mesh.routing import compile_virtual_host

# Small alphabets so matches happen; "İ" and "ẞ" change length when lower-cased,
# "\udc80" is a lone surrogate (in requests only: xDS strings are UTF-8),
# "\ufffd" what a lossy decoder would make of it.
CONFIG_ALPHABET = ["a", "b", "A", "/", "-", "ä", "Ä", "İ", "ẞ", "\ufffd"]
text = st.text(alphabet=st.sampled_from(CONFIG_ALPHABET), max_size=5)
request_text = st.text(alphabet=st.sampled_from([*CONFIG_ALPHABET, "\udc80"]), max_size=5)
regexes = st.sampled_from(["a*", "/a.*", "/(a|b)+", "[ab/]*b", ".*", "/", "b?/?a", "ä+", "A"])


@st.composite
def routes(draw: st.DrawFn, index: int) -> Route:
    match = draw(route_matches(text, regexes))
    weights = draw(st.lists(st.sampled_from([0, 1, 3, 90, 2**31]), min_size=1, max_size=3))
    if draw(st.integers(0, 5)) == 0:
        weights = []
    clusters = tuple(WeightedCluster(f"c{index}-{i}", w) for i, w in enumerate(weights))
    answer = draw(st.sampled_from(["none", "none", "redirect", "direct"]))
    return Route(
        name=f"r{index}",
        match=match,
        action=RouteAction(clusters=clusters) if clusters else None,
        redirect=RedirectAction(path="/x") if answer == "redirect" else None,
        direct_response=DirectResponse(200) if answer == "direct" else None,
    )


@st.composite
def hosts(draw: st.DrawFn) -> tuple[VirtualHost, list[str]]:
    """A virtual host and the texts its matchers name (requests reuse them to
    match). The test compiles it: building a table draws from `random`."""
    count = draw(st.integers(1, 4))
    vhost = VirtualHost("h", ("h",), tuple(draw(routes(i)) for i in range(count)))
    texts = [r.match.path.value for r in vhost.routes]
    texts += [h.matcher.value for r in vhost.routes for h in r.match.headers]
    return vhost, texts


@st.composite
def near(draw: st.DrawFn, texts: list[str]) -> str:
    """A text that often matches: one the config names, its case changed in
    places, with generated text around it; or generated text alone."""
    if not draw(st.booleans()):
        return draw(request_text)
    base = draw(st.sampled_from(texts))
    flips = draw(st.lists(st.booleans(), min_size=len(base), max_size=len(base)))
    changed = "".join(c.swapcase() if f else c for c, f in zip(base, flips, strict=True))
    return draw(st.sampled_from(["", "/"])) + changed + draw(request_text)


@st.composite
def requests(draw: st.DrawFn, texts: list[str]) -> tuple[str, str, dict[str, str]]:
    path = draw(near(texts))
    method = draw(st.one_of(st.sampled_from(["GET", "POST", "get", "\udc80"]), near(texts)))
    present = [name for name in HEADERS[:2] if draw(st.integers(0, 3))]  # mostly present
    return path, method, {name: draw(near(texts)) for name in present}


@settings(max_examples=max(300, settings.default.max_examples))  # ~2 s
@given(hosts(), st.data(), st.floats(0.0, 1.0, exclude_max=True))
def test_native_and_python_pick_the_same_decision(
    host: tuple[VirtualHost, list[str]], data: st.DataObject, rand: float
) -> None:
    vhost, texts = host
    table = compile_virtual_host(vhost)
    for _ in range(4):
        path, method, headers = data.draw(requests(texts))
        python = oracle.pick_with(table, path, method, headers.get, rand)
        native = table.pick_with(path, method, headers.get, rand)
        assert native is python, (path, method, headers, rand)
        first = table.first_match(path, method, headers.get)
        expected = next(
            (r for r in table.routes if oracle.route_predicate(r.match)(path, method, headers.get)),
            None,
        )
        assert first is expected, (path, method, headers)


def test_the_native_split_draws_as_weighted() -> None:
    """The native matcher's own draw: 20,000 picks of a 90/10 split give v2
    within 5 sigma of 2,000 (sigma = sqrt(20000 * 0.1 * 0.9) ~ 42)."""
    split = RouteAction(clusters=(WeightedCluster("v1", 90), WeightedCluster("v2", 10)))
    route = Route(name="split", match=RouteMatch(PathMatcher(MatchKind.PREFIX, "/")), action=split)
    table = compile_virtual_host(VirtualHost("h", ("h",), (route,)))
    counts = Counter(table.pick("/", "GET", {}.get).cluster for _ in range(20_000))  # type: ignore[union-attr]
    assert abs(counts["v2"] - 2_000) <= 5 * 42, counts


def test_a_hand_built_matcher_rust_cannot_read_is_refused() -> None:
    """Lone surrogates never come from xDS (its strings are UTF-8); a model
    built by hand with one is refused when the table is built, not at a request."""
    match = RouteMatch(PathMatcher(MatchKind.PREFIX, "/\udc80"))
    route = Route(name="r", match=match, action=RouteAction((WeightedCluster("c", 1),)))
    with pytest.raises(UnicodeEncodeError):
        compile_virtual_host(VirtualHost("h", ("h",), (route,)))


def test_seeding_random_fixes_the_native_split() -> None:
    """The native matcher's draw is seeded from `random`: a test that seeds
    `random` gets the same splits again."""
    split = RouteAction(clusters=(WeightedCluster("v1", 50), WeightedCluster("v2", 50)))
    route = Route(name="split", match=RouteMatch(PathMatcher(MatchKind.PREFIX, "/")), action=split)
    vhost = VirtualHost("h", ("h",), (route,))
    runs = []
    for _ in range(2):
        random.seed(7)
        table = compile_virtual_host(vhost)
        runs.append([table.pick("/", "GET", {}.get).cluster for _ in range(64)])  # type: ignore[union-attr]
    assert runs[0] == runs[1] and set(runs[0]) == {"v1", "v2"}
