"""The native route matcher (issue 25), when the Rust core is built.

`proxyless_mesh_native.RouteMatcher` answers a RouteTable's `pick` in one
crossing with the same RouteDecision objects; without the core, or with
PROXYLESS_MESH_NATIVE=0, the tables match in Python. Regexes stay Python's
(`re`): the matcher calls the compiled pattern, so both agree on what a
pattern means (tests/property/test_native_route_props.py).
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
    """A RouteMatcher over `specs`, or None without the native core or when
    a matcher's text is not UTF-8 (lone surrogates: never from xDS, whose
    strings are UTF-8, only from a model built by hand)."""
    if matcher_class is None:
        return None
    try:  # seeded from `random`, as the Python table draws: random.seed() fixes both
        return matcher_class(specs, random.getrandbits(64))
    except UnicodeEncodeError:
        return None
