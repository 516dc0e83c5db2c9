"""Compiled matchers: a model RouteMatch turned into a plain predicate.

Compilation happens once per config update; a request only calls the
resulting functions. Semantics follow Envoy's RouteMatch: the path is matched
without the query string, regexes must match the whole value, a header that
appears several times is matched against its values joined with ",", and a
header matcher with `invert` matches when the inner matcher does not
(including when the header is absent, as Envoy does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from proxyless_mesh.model import HeaderMatcher, MatchKind, PathMatcher, RouteMatch, StringMatcher

StrPredicate = Callable[[str], bool]
# A request as routing sees it: path without query, method, and a header
# lookup returning the (comma-joined) value or None. Names are lower-case.
HeaderLookup = Callable[[str], "str | None"]
RequestPredicate = Callable[[str, str, HeaderLookup], bool]


def compile_string_matcher(m: StringMatcher) -> StrPredicate:
    """Return a predicate for one StringMatcher (value is never None here)."""
    kind = m.kind
    if m.ignore_case and kind is not MatchKind.REGEX:
        want = m.value.lower()
        inner = _plain_predicate(kind, want)
        return lambda value: inner(value.lower())
    if kind is MatchKind.REGEX:
        rx = re.compile(m.value, re.IGNORECASE if m.ignore_case else 0)
        return lambda value: rx.fullmatch(value) is not None
    return _plain_predicate(kind, m.value)


def _plain_predicate(kind: MatchKind, want: str) -> StrPredicate:
    if kind is MatchKind.EXACT:
        return want.__eq__
    if kind is MatchKind.PREFIX:
        return lambda value: value.startswith(want)
    if kind is MatchKind.SUFFIX:
        return lambda value: value.endswith(want)
    if kind is MatchKind.CONTAINS:
        return lambda value: want in value
    if kind is MatchKind.PRESENT:
        return lambda value: True
    raise ValueError(f"unsupported string match kind {kind}")


def compile_path_matcher(p: PathMatcher) -> StrPredicate:
    return compile_string_matcher(
        StringMatcher(kind=p.kind, value=p.value, ignore_case=not p.case_sensitive)
    )


def compile_header_matcher(h: HeaderMatcher) -> Callable[[HeaderLookup, str], bool]:
    """Predicate over (lookup, method); `:method` is served from the method."""
    test = compile_string_matcher(h.matcher)
    invert = h.invert
    name = h.name

    def check(lookup: HeaderLookup, method: str) -> bool:
        value = method if name == ":method" else lookup(name)
        hit = value is not None and test(value)
        return hit != invert

    return check


def compile_route_match(match: RouteMatch) -> RequestPredicate:
    path_ok = compile_path_matcher(match.path)
    header_checks = tuple(compile_header_matcher(h) for h in match.headers)
    if not header_checks:
        return lambda path, method, lookup: path_ok(path)

    def predicate(path: str, method: str, lookup: HeaderLookup) -> bool:
        if not path_ok(path):
            return False
        return all(check(lookup, method) for check in header_checks)

    return predicate


def mapping_lookup(headers: Mapping[str, str]) -> HeaderLookup:
    """A HeaderLookup over a plain mapping with lower-case keys (tests, tools)."""
    return headers.get
