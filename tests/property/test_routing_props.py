"""RouteTable.pick against a reference model written plainly here: first route
whose path matcher and every header matcher hold wins (Envoy's semantics)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from route_matches import HEADERS, route_matches

from proxyless_mesh.model import (
    MatchKind,
    Route,
    RouteAction,
    StringMatcher,
    VirtualHost,
    WeightedCluster,
)
from proxyless_mesh.routing import compile_virtual_host
from proxyless_mesh.routing._matching import mapping_lookup

ALPHA = "ab/"
text = st.text(alphabet=ALPHA, max_size=5)
regexes = st.sampled_from(["a*", "/a.*", "/(a|b)+", "[ab/]*b", ".*", "/", "b?/?a"])


@st.composite
def routes(draw: st.DrawFn, index: int) -> Route:
    match = draw(route_matches(text, regexes))
    action = RouteAction(clusters=(WeightedCluster(f"c{index}", 1),))
    return Route(name=f"r{index}", match=match, action=action)


def ref_string(m: StringMatcher, value: str) -> bool:
    if m.kind is MatchKind.PRESENT:
        return True
    if m.kind is MatchKind.REGEX:
        flags = re.IGNORECASE if m.ignore_case else 0
        return re.fullmatch(m.value, value, flags) is not None
    want, got = (m.value.lower(), value.lower()) if m.ignore_case else (m.value, value)
    return {
        MatchKind.EXACT: got == want,
        MatchKind.PREFIX: got.startswith(want),
        MatchKind.SUFFIX: got.endswith(want),
        MatchKind.CONTAINS: want in got,
    }[m.kind]


def ref_pick(table: list[Route], path: str, method: str, headers: dict[str, str]) -> str | None:
    for route in table:
        p = route.match.path
        if not ref_string(StringMatcher(p.kind, p.value, not p.case_sensitive), path):
            continue
        ok = True
        for h in route.match.headers:
            value = method if h.name == ":method" else headers.get(h.name)
            hit = value is not None and ref_string(h.matcher, value)
            if hit == h.invert:
                ok = False
        if ok:
            return route.action.clusters[0].name if route.action else None
    return None


@given(
    st.integers(1, 5).flatmap(lambda n: st.tuples(*(routes(i) for i in range(n)))),
    st.lists(
        st.tuples(
            text.map(lambda t: "/" + t),
            st.sampled_from(["GET", "POST", "get"]),
            st.dictionaries(st.sampled_from(HEADERS[:2]), text | st.just("A/B"), max_size=2),
        ),
        min_size=1,
        max_size=10,
    ),
)
def test_pick_agrees_with_the_reference_model(
    table: tuple[Route, ...], requests: list[tuple[str, str, dict[str, str]]]
) -> None:
    compiled = compile_virtual_host(VirtualHost("vh", ("*",), table))
    for path, method, headers in requests:
        decision = compiled.pick(path, method, mapping_lookup(headers))
        got = decision.cluster if decision else None
        assert got == ref_pick(list(table), path, method, headers), (path, method, headers)
