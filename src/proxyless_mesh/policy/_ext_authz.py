"""Envoy's ext_authz protocol, sans I/O: what an AuthorizationPolicy CUSTOM
provider is asked, and what its answer means.

The HTTP check request is the one Envoy's HTTP ext_authz service gets: the
original method, `path_prefix` + the normalized path and query, no body
(`content-length: 0`), the request headers (all of them, or when the provider
lists `includeRequestHeadersInCheck` those plus Host, Method, Path,
Content-Length and Authorization). A 200 answer allows and its
`headersToUpstreamOnAllow` headers go to the app; any other status denies,
and that status, the body and the `headersToDownstreamOnDeny` headers go to
the client. No answer (refused connection, timeout) or a 5xx is an error:
denied with `statusOnError` unless `failOpen`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from proxyless_mesh.model import ExtAuthz
from proxyless_mesh.policy._engine import Decision, InboundRequest, PolicySet

ALWAYS_SENT = frozenset({"host", ":authority", "authorization", "content-length"})


@dataclass(frozen=True, slots=True)
class AuthzVerdict:
    """The authorizer's answer: allowed (with headers for the app) or denied
    (status, headers and body for the client)."""

    allowed: bool
    status: int = 403
    upstream_headers: tuple[tuple[str, str], ...] = ()
    client_headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


def check_headers(config: ExtAuthz, request: InboundRequest) -> dict[str, str]:
    """The request headers the authorizer is sent (lower-case names)."""
    headers = {k: v for k, v in request.headers.items() if not k.startswith(":")}
    if config.allowed_headers is not None:
        wanted = ALWAYS_SENT.union(config.allowed_headers)
        headers = {k: v for k, v in headers.items() if k in wanted}
    if "host" not in headers and request.headers.get(":authority"):
        headers["host"] = request.headers[":authority"]
    return headers


def http_check(
    config: ExtAuthz, request: InboundRequest, decision: Decision
) -> tuple[str, str, dict[str, str]]:
    """(method, path with query, headers) of the HTTP check request."""
    path = config.path_prefix + decision.path + (f"?{decision.query}" if decision.query else "")
    headers = check_headers(config, request)
    headers["content-length"] = "0"
    return request.method, path, headers


def http_verdict(
    config: ExtAuthz, status: int, headers: Iterable[tuple[str, str]], body: bytes
) -> AuthzVerdict:
    if 500 <= status <= 599:  # Envoy's HTTP client: a 5xx is the authorizer failing
        return error_verdict(config)
    pairs = [(k.lower(), v) for k, v in headers]
    if status == 200:
        wanted = set(config.upstream_headers)
        return AuthzVerdict(True, 200, upstream_headers=tuple(p for p in pairs if p[0] in wanted))
    wanted = set(config.client_headers)
    client = tuple(p for p in pairs if p[0] in wanted)
    return AuthzVerdict(False, status, client_headers=client, body=body)


def error_verdict(config: ExtAuthz) -> AuthzVerdict:
    """The authorizer could not be asked: fail closed unless `fail_open`."""
    if config.fail_open:
        return AuthzVerdict(True, 200)
    return AuthzVerdict(False, config.status_on_error)


def after_verdict(policies: PolicySet, request: InboundRequest, verdict: AuthzVerdict) -> Decision:
    """DENY and ALLOW after an allowing authorizer (Istio's order), on the
    request with the authorizer's headers; the app gets them too."""
    added: Mapping[str, str] = dict(verdict.upstream_headers)
    if added:
        request = replace(request, headers={**request.headers, **added})
    decision = policies.check(request, after_custom=True)
    if decision.allowed and added:
        decision = replace(
            decision,
            remove_headers=decision.remove_headers | frozenset(added),
            add_headers=(*decision.add_headers, *added.items()),
        )
    return decision
