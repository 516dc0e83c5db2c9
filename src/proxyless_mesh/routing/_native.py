"""The route matcher is native (issue 25): `proxyless_mesh_native.RouteMatcher`
answers a RouteTable's `pick` in one crossing with RouteDecision objects made
here. Regexes stay Python's (`re`): the matcher calls the compiled pattern,
so a pattern means what Python's `re` says. tests/property/test_native_route_props.py
holds it to a Python reference (tests/oracles/routing.py).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from proxyless_mesh import native_core
from proxyless_mesh.model import MatchKind, RouteMatch, StringMatcher

matcher_class: Any = native_core.member("RouteMatcher")

# (kind, value, ignore_case, fullmatch): what the native matcher tests a value with.
StrSpec = tuple[str, str, bool, Any]


def string_spec(m: StringMatcher) -> StrSpec:
    """A StringMatcher as `compile_string_matcher` reads it: the value
    lower-cased when case is ignored, a regex compiled with the same flags."""
    if m.kind is MatchKind.REGEX:
        rx = re.compile(m.value, re.IGNORECASE if m.ignore_case else 0)
        return (m.kind.value, m.value, m.ignore_case, rx.fullmatch)
    want = m.value.lower() if m.ignore_case else m.value
    return (m.kind.value, want, m.ignore_case, None)


def route_spec(
    match: RouteMatch, cumulative: Sequence[int], total: int, decisions: Sequence[object]
) -> tuple[Any, ...]:
    path = match.path
    path_test = string_spec(StringMatcher(path.kind, path.value, not path.case_sensitive))
    headers = [(h.name, string_spec(h.matcher), h.invert) for h in match.headers]
    return (path_test, headers, list(cumulative), total, list(decisions))


def native_matcher(specs: list[tuple[Any, ...]]) -> Any:
    """A RouteMatcher over `specs`, its split seeded from `random` (so
    random.seed() fixes it). A matcher's text must be UTF-8: xDS strings are;
    a model built by hand with lone surrogates raises UnicodeEncodeError."""
    return matcher_class(specs, random.getrandbits(64))
