"""String and header matchers compiled to plain predicates, for what is
matched outside the route table: retriable response headers (retry_on) and
CORS origins. Routes themselves are matched natively (_native.py).

Compilation happens once per config update. Semantics follow Envoy's
StringMatcher and HeaderMatcher: regexes must match the whole value, and a
header matcher with `invert` matches when the inner matcher does not
(including when the header is absent, as Envoy does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from proxyless_mesh.model import HeaderMatcher, MatchKind, StringMatcher

StrPredicate = Callable[[str], bool]
# A request's headers as routing sees them: a lookup returning the
# (comma-joined) value or None. Names are lower-case.
HeaderLookup = Callable[[str], "str | None"]


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


def mapping_lookup(headers: Mapping[str, str]) -> HeaderLookup:
    """A HeaderLookup over a plain mapping with lower-case keys (tests, tools)."""
    return headers.get
