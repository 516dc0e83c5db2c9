"""Pure request/response rewrites a route asks for: path, authority, headers, redirects.

Envoy semantics, so a VirtualService behaves as it does under Istio:
- `prefix_rewrite` swaps the *matched* part of the path: the route's prefix for
  a prefix match, the whole path for an exact or regex match. The query string
  is kept.
- `regex_rewrite` replaces every match of the RE2 pattern in the path (query
  excluded and kept); `\\1`..`\\9` (and `\\0`) in the substitution are groups.
- `host_rewrite` (Istio rewrite.authority) replaces the whole authority.
- Header mutations: removals first, then `set` (replace), then `add` (append),
  Envoy's "remove before add" order; an empty value is not written (Envoy's
  keep_empty_value defaults to false).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable

from proxyless_mesh.model import (
    HeaderMutation,
    MatchKind,
    PathMatcher,
    RedirectAction,
    RouteAction,
)

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _split_query(path: str) -> tuple[str, str | None]:
    bare, sep, query = path.partition("?")
    return bare, (query if sep else None)


def _join_query(bare: str, query: str | None) -> str:
    return bare if query is None else f"{bare}?{query}"


def _swap_matched(bare: str, match: PathMatcher, replacement: str) -> str:
    if match.kind is MatchKind.PREFIX:
        n = len(match.value)
        head = bare[:n]
        same = head == match.value if match.case_sensitive else head.lower() == match.value.lower()
        return replacement + bare[n:] if same else bare
    return replacement


@functools.lru_cache(maxsize=256)
def _regex_rewriter(pattern: str, substitution: str) -> Callable[[str], str]:
    """Compile an RE2 pattern and substitution once (RE2's `\\N` groups and
    `\\\\` escapes; any other character is literal)."""
    rx = re.compile(pattern)
    parts: list[str | int] = []
    literal: list[str] = []
    i = 0
    while i < len(substitution):
        ch = substitution[i]
        nxt = substitution[i + 1] if i + 1 < len(substitution) else ""
        if ch == "\\" and nxt.isdigit():
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(int(nxt))
            i += 2
            continue
        if ch == "\\" and nxt == "\\":
            literal.append("\\")
            i += 2
            continue
        literal.append(ch)
        i += 1
    if literal:
        parts.append("".join(literal))
    frozen = tuple(parts)

    def replace(m: re.Match[str]) -> str:
        return "".join(p if isinstance(p, str) else (m.group(p) or "") for p in frozen)

    return lambda text: rx.sub(replace, text)


def rewrite_path(path: str, match: PathMatcher, action: RouteAction) -> str:
    """The path (with its query) to send upstream for a request that matched
    `match` and is routed by `action`."""
    if action.prefix_rewrite is None and action.regex_rewrite is None:
        return path
    bare, query = _split_query(path)
    if action.prefix_rewrite is not None:
        bare = _swap_matched(bare, match, action.prefix_rewrite)
    elif action.regex_rewrite is not None:
        rr = action.regex_rewrite
        bare = _regex_rewriter(rr.pattern, rr.substitution)(bare)
    return _join_query(bare, query)


def rewrite_authority(authority: str, action: RouteAction) -> str:
    """The Host/:authority to send: `host_rewrite` when set, else unchanged."""
    return action.host_rewrite if action.host_rewrite else authority


def apply_header_mutation(
    headers: Iterable[tuple[str, str]], mutation: HeaderMutation
) -> list[tuple[str, str]]:
    """A new header list with `mutation` applied (names case-insensitive;
    the order of untouched headers is kept)."""
    gone = {name.lower() for name in mutation.remove}
    gone.update(name.lower() for name, value in mutation.set if value)
    out = [(n, v) for n, v in headers if n.lower() not in gone]
    out.extend((n, v) for n, v in mutation.set if v)
    out.extend((n, v) for n, v in mutation.add if v)
    return out


def redirect_location(
    *,
    scheme: str,
    host: str,
    port: int | None,
    path: str,
    redirect: RedirectAction,
    match: PathMatcher | None = None,
) -> tuple[int, str]:
    """(status, Location) for a route that redirects. `host` is the request's
    host without port, `port` its explicit port if any, `path` includes the
    query. A new host drops the request's port (Envoy swaps the whole host
    value); so does a new scheme; a default port for the scheme is never
    written. A redirect path containing `?` replaces the query, else the
    query is kept."""
    new_scheme = redirect.scheme or scheme
    new_host = redirect.host or host
    new_port = port
    if redirect.port is not None:
        new_port = redirect.port
    elif redirect.host or (redirect.scheme and redirect.scheme != scheme):
        new_port = None
    if new_port is not None and _DEFAULT_PORTS.get(new_scheme) == new_port:
        new_port = None
    bare, query = _split_query(path)
    if redirect.path is not None:
        new_bare, new_query = _split_query(redirect.path)
        bare, query = new_bare, (new_query if new_query is not None else query)
    elif redirect.prefix_rewrite is not None and match is not None:
        bare = _swap_matched(bare, match, redirect.prefix_rewrite)
    if ":" in new_host and not new_host.startswith("["):
        new_host = f"[{new_host}]"
    authority = new_host if new_port is None else f"{new_host}:{new_port}"
    return redirect.response_code, f"{new_scheme}://{authority}{_join_query(bare, query)}"
