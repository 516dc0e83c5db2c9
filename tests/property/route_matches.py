"""Hypothesis strategies for route matches, shared by the routing property
tests: over a small alphabet (so matches happen) and a few regexes."""

from __future__ import annotations

from hypothesis import strategies as st

from proxyless_mesh.model import HeaderMatcher, MatchKind, PathMatcher, RouteMatch, StringMatcher

HEADERS = ("x-a", "x-b", ":method")


@st.composite
def string_matchers(
    draw: st.DrawFn, text: st.SearchStrategy[str], regexes: st.SearchStrategy[str]
) -> StringMatcher:
    kind = draw(st.sampled_from(list(MatchKind)))
    value = draw(regexes) if kind is MatchKind.REGEX else draw(text)
    return StringMatcher(kind, value, draw(st.booleans()))


@st.composite
def route_matches(
    draw: st.DrawFn, text: st.SearchStrategy[str], regexes: st.SearchStrategy[str]
) -> RouteMatch:
    """A path matcher (prefix, exact or regex; case-sensitive or not) and up
    to two header matchers of any kind, inverted or not, on HEADERS."""
    kind = draw(st.sampled_from([MatchKind.PREFIX, MatchKind.EXACT, MatchKind.REGEX]))
    value = draw(regexes) if kind is MatchKind.REGEX else "/" + draw(text)
    matchers = string_matchers(text, regexes)
    headers = draw(
        st.lists(
            st.builds(HeaderMatcher, st.sampled_from(HEADERS), matchers, st.booleans()),
            max_size=2,
        )
    )
    return RouteMatch(PathMatcher(kind, value, draw(st.booleans())), tuple(headers))
