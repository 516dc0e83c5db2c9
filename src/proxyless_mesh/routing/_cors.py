"""A route's CORS policy applied as Envoy's CORS filter applies it.

Istio puts a VirtualService's `corsPolicy` on the route; Envoy's filter then
(1) leaves requests without an `Origin`, or from an origin no matcher allows,
alone; (2) answers an allowed preflight (OPTIONS with
`Access-Control-Request-Method`) itself with 200 and the allow headers, never
forwarding it; (3) adds `Access-Control-Allow-Origin` (the request's origin),
`-Allow-Credentials` and `-Expose-Headers` to the response of any other
request from an allowed origin. A preflight from an origin not allowed is
forwarded unless `forward_not_matching_preflights` is off (Istio's
`unmatchedPreflights: IGNORE`): then it is answered 200 without CORS headers.
"""

from __future__ import annotations

from collections.abc import Callable

from proxyless_mesh.model import CorsPolicy
from proxyless_mesh.routing._matching import compile_string_matcher

Headers = tuple[tuple[str, str], ...]


def _origin_allowed(policy: CorsPolicy, origin: str) -> bool:
    """Envoy: a matcher allows an origin when it matches it, or matches "*"."""
    for matcher in policy.allow_origins:
        matches = compile_string_matcher(matcher)
        if matches("*") or matches(origin):
            return True
    return False


def cors(
    policy: CorsPolicy, method: str, header: Callable[[str], str | None]
) -> tuple[Headers | None, Headers]:
    """(the preflight answer's headers, or None to forward the request;
    headers to add to the response of a forwarded request)."""
    origin = header("origin")
    if not origin:
        return None, ()
    preflight = method == "OPTIONS" and bool(header("access-control-request-method"))
    if not _origin_allowed(policy, origin):
        if preflight and not policy.forward_not_matching_preflights:
            return (), ()
        return None, ()
    if preflight:
        answer = [("access-control-allow-origin", origin)]
        if policy.allow_credentials:
            answer.append(("access-control-allow-credentials", "true"))
        for name, value in (
            ("access-control-allow-methods", policy.allow_methods),
            ("access-control-allow-headers", policy.allow_headers),
            ("access-control-max-age", policy.max_age),
        ):
            if value:
                answer.append((name, value))
        return tuple(answer), ()
    added = [("access-control-allow-origin", origin)]
    if policy.allow_credentials:
        added.append(("access-control-allow-credentials", "true"))
    if policy.expose_headers:
        added.append(("access-control-expose-headers", policy.expose_headers))
    return None, tuple(added)
