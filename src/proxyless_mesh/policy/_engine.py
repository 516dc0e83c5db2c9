"""The inbound decision: hygiene, normalize, authenticate (JWT), authorize (RBAC), log.

Hygiene (`_hygiene.request_hygiene`) first refuses with 400 what Envoy's HTTP
codec would refuse, so every server stack decides alike.

Sans-I/O and shared by every integration (ASGI, WSGI, gRPC sync and aio):
they turn their request into an `InboundRequest`, call `PolicySet.check`, and
either answer the `Decision`'s status or hand the app the rewritten request.

Istio's order comes from the RBAC filters istiod emits, kept in order here:
an AUDIT (LOG) engine, then a DENY engine, then an ALLOW engine. A LOG match
writes an audit line and never blocks; the first DENY match denies; an ALLOW
engine that exists but matches nothing denies (so an ALLOW policy with no
rules denies everything); no ALLOW engine means allow.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from proxyless_mesh.model import ExtAuthz, JwtAuthentication, Rbac, RbacAction
from proxyless_mesh.policy._compile import IpAddress, Predicate, RequestContext, compile_rule
from proxyless_mesh.policy._errors import MalformedRequestError
from proxyless_mesh.policy._hygiene import request_hygiene
from proxyless_mesh.policy._jwt import ISTIO_AUTHN, JwtAuthenticator, JwtAuthError, strip_params
from proxyless_mesh.policy._normalize import (
    PathNormalization,
    normalize_host,
    normalize_path,
    split_target,
)

logger = logging.getLogger("proxyless_mesh.policy")

DENIED_BODY = b"RBAC: access denied"
UNAUTHENTICATED_BODY = b"Jwt verification fails"
BAD_REQUEST_BODY = b"Bad Request"
NOT_READY_BODY = b"inbound policy not received yet"
REFUSAL_BODIES = {
    400: BAD_REQUEST_BODY,
    401: UNAUTHENTICATED_BODY,
    403: DENIED_BODY,
    503: NOT_READY_BODY,
}
"""The body of each status `PolicySet.check` refuses with."""


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """One request as the integrations see it, before normalization.

    `target` is the raw request target (path, optional `?query`, optional
    fragment) as received; `headers` has lower-case names with duplicate
    values joined by "," (use `join_headers`); `peer_principal` is the
    verified SPIFFE ID of the mTLS peer, None without mTLS; `http_version`
    is "1.1", "1.0" or "2" (HTTP/1.1 must carry a Host)."""

    method: str
    target: bytes
    headers: Mapping[str, str]
    peer_principal: str | None = None
    source_ip: str | None = None
    destination_port: int | None = None
    destination_ip: str | None = None
    sni: str | None = None
    scheme: str = "http"
    http_version: str = "1.1"


@dataclass(frozen=True, slots=True)
class ShadowResult:
    """What a dry-run (shadow) engine would have decided, in Envoy's terms:
    its dynamic metadata `<prefix>shadow_engine_result` ("allowed" or
    "denied") and `<prefix>shadow_effective_policy_id` (the policy that
    matched, "" when none did), with Istio's prefix `istio_dry_run_allow_` or
    `istio_dry_run_deny_`."""

    prefix: str
    engine_result: str
    effective_policy_id: str = ""

    def metadata(self) -> dict[str, str]:
        """The Envoy dynamic-metadata keys and values (the id only when set)."""
        out = {f"{self.prefix}shadow_engine_result": self.engine_result}
        if self.effective_policy_id:
            out[f"{self.prefix}shadow_effective_policy_id"] = self.effective_policy_id
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome. `status` is 200 when allowed, else 400/401/403 (or 503
    while a registering server's policy is on its way). When
    allowed, the app must be given `path` (normalized, percent-encoded),
    `query`, and the headers minus `remove_headers` plus `add_headers`; and,
    when `authority` is set (an absolute-form target), that as its Host.
    `shadow` holds the dry-run policies' results (empty without any)."""

    status: int
    policy: str = ""
    reason: str = ""
    path: str = ""
    query: str = ""
    remove_headers: frozenset[str] = frozenset()
    add_headers: tuple[tuple[str, str], ...] = ()
    authority: str | None = None
    shadow: tuple[ShadowResult, ...] = ()
    # A CUSTOM policy (`policy`) matched: the authorizer decides first. The
    # status stays 403, so a server that cannot ask it refuses (fail closed);
    # one that can asks, then calls `check(..., after_custom=True)`.
    ext_authz: ExtAuthz | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 200


@dataclass(frozen=True, slots=True)
class _Engine:
    action: RbacAction
    policies: tuple[tuple[str, Predicate], ...]
    shadow: bool = False
    prefix: str = ""
    ext_authz: ExtAuthz | None = None

    def first_match(self, ctx: RequestContext) -> str | None:
        for name, matches in self.policies:
            if matches(ctx):
                return name
        return None


def _compile_policy_pair(perms: Predicate, princ: Predicate) -> Predicate:
    return lambda ctx: perms(ctx) and princ(ctx)


def _any_of(preds: tuple[Predicate, ...]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    return lambda ctx: any(p(ctx) for p in preds)


class PolicySet:
    """The immutable, compiled inbound policy of one workload.

    Built once per config update (regexes, CIDRs and JWKS compiled here);
    `check` is the per-request call. A provider returns the current one."""

    __slots__ = ("_custom", "_engines", "_jwt", "_mode")

    def __init__(
        self,
        rbacs: Sequence[Rbac] = (),
        jwt: JwtAuthentication | None = None,
        path_normalization: PathNormalization = PathNormalization.BASE,
    ) -> None:
        engines = []
        for rbac in rbacs:
            compiled = []
            for name, policy in rbac.policies:
                if not policy.permissions or not policy.principals:
                    continue  # Envoy: a policy with no permission or principal matches nothing
                perms = _any_of(tuple(compile_rule(r) for r in policy.permissions))
                princ = _any_of(tuple(compile_rule(r) for r in policy.principals))
                compiled.append((name, _compile_policy_pair(perms, princ)))
            engines.append(
                _Engine(
                    rbac.action, tuple(compiled), rbac.shadow, rbac.shadow_prefix, rbac.ext_authz
                )
            )
        # The CUSTOM engine (at most one, first, as the translator sends it) apart.
        self._custom = next((e for e in engines if e.ext_authz is not None), None)
        self._engines = tuple(e for e in engines if e.ext_authz is None)
        self._jwt = JwtAuthenticator(jwt or JwtAuthentication())
        self._mode = path_normalization

    @classmethod
    def allow_all(cls) -> PolicySet:
        return cls()

    @classmethod
    def awaiting(cls) -> PolicySet:
        """Refuses every request with 503 (retriable, as Istio's default retry
        policy has it): the policy is known to be on its way but not here yet."""
        return _Awaiting()

    def check(self, request: InboundRequest, *, after_custom: bool = False) -> Decision:
        """The decision; `after_custom`: the CUSTOM authorizer has allowed
        `request` (with the headers it added), so its engine is skipped."""
        try:
            target, replaced = request_hygiene(
                request.method, request.target, request.headers, request.http_version
            )
            raw_path, raw_query = split_target(target)
            path = normalize_path(raw_path, self._mode)
            query = raw_query.decode("ascii")
        except (MalformedRequestError, UnicodeDecodeError) as exc:
            return self._refuse(400, "", f"malformed request: {exc}", request, None)
        authority = replaced
        if authority is None:
            authority = request.headers.get(":authority") or request.headers.get("host", "")
        host = normalize_host(authority)
        ctx = RequestContext(
            method=request.method,
            host=host,
            path=path,
            query=query,
            scheme=request.scheme,
            headers=request.headers,
            peer_principal=request.peer_principal,
            source_ip=_ip(request.source_ip),
            destination_ip=_ip(request.destination_ip),
            destination_port=request.destination_port,
            sni=request.sni,
        )
        remove: frozenset[str] = self._jwt.claim_headers
        add: tuple[tuple[str, str], ...] = ()
        if self._jwt.enabled:
            try:
                result = self._jwt.authenticate(request.headers, query)
            except JwtAuthError as exc:
                return self._refuse(401, "", str(exc), request, ctx)
            if result is not None:
                ctx.metadata = {ISTIO_AUTHN: result.metadata()}
                remove = remove | result.remove_headers
                add = result.add_headers
                query = strip_params(query, result.remove_params)
        custom = self._custom
        if custom is not None and not after_custom:  # Istio's order: CUSTOM before the rest
            matched = custom.first_match(ctx)
            if matched is not None:
                _log("ext_authz", matched, "matched CUSTOM policy", ctx, request)
                reason = "CUSTOM policy matched: the external authorizer decides"
                return Decision(403, matched, reason, path, query, ext_authz=custom.ext_authz)
        shadow: tuple[ShadowResult, ...] = ()
        for engine in self._engines:
            matched = engine.first_match(ctx)
            if engine.shadow:
                shadow += (_shadow_result(engine, matched, ctx, request),)
            elif engine.action is RbacAction.LOG:
                if matched is not None:
                    _log("audit", matched, "matched AUDIT policy", ctx, request)
            elif engine.action is RbacAction.DENY:
                if matched is not None:
                    return self._refuse(403, matched, "matched DENY policy", request, ctx, shadow)
            elif matched is None:
                return self._refuse(403, "", "no ALLOW policy matched", request, ctx, shadow)
        return Decision(
            200,
            path=path,
            query=query,
            remove_headers=remove,
            add_headers=add,
            authority=replaced,
            shadow=shadow,
        )

    def _refuse(
        self,
        status: int,
        policy: str,
        reason: str,
        request: InboundRequest,
        ctx: RequestContext | None,
        shadow: tuple[ShadowResult, ...] = (),
    ) -> Decision:
        kind = {400: "bad_request", 401: "unauthenticated", 403: "deny", 503: "not_ready"}[status]
        _log(kind, policy, reason, ctx, request)
        return Decision(status, policy=policy, reason=reason, shadow=shadow)


class _Awaiting(PolicySet):
    """`PolicySet.awaiting()`: a subclass, so the policies in use pay nothing for it."""

    __slots__ = ()

    def check(self, request: InboundRequest, *, after_custom: bool = False) -> Decision:
        reason = "this server registered moments ago; its inbound policy is on its way"
        return self._refuse(503, "", reason, request, None)


def _shadow_result(
    engine: _Engine, matched: str | None, ctx: RequestContext, request: InboundRequest
) -> ShadowResult:
    """A dry-run engine's verdict, as Envoy's RBAC filter computes it for
    `shadow_rules`: an ALLOW engine allows what matches, a DENY engine denies it."""
    allows = (matched is not None) == (engine.action is RbacAction.ALLOW)
    result = ShadowResult(engine.prefix, "allowed" if allows else "denied", matched or "")
    reason = f"{engine.prefix}shadow_engine_result={result.engine_result}"
    _log("dry_run", result.effective_policy_id, reason, ctx, request)
    return result


def _ip(value: str | None) -> IpAddress | None:
    if not value:
        return None
    try:
        return ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None


def _namespace(principal: str | None) -> str | None:
    if principal is None or "/ns/" not in principal:
        return None
    return principal.split("/ns/", 1)[1].split("/", 1)[0]


def _log(
    decision: str,
    policy: str,
    reason: str,
    ctx: RequestContext | None,
    request: InboundRequest,
) -> None:
    """One JSON line: who, what, which policy. Never headers, query or token."""
    if not logger.isEnabledFor(logging.INFO):
        return
    meta = ctx.metadata.get(ISTIO_AUTHN, {}) if ctx is not None else {}
    line = {
        "decision": decision,
        "policy": policy,
        "reason": reason,
        "principal": request.peer_principal,
        "namespace": _namespace(request.peer_principal),
        "source_ip": request.source_ip,
        "request_principal": meta.get("request.auth.principal"),
        "method": request.method,
        "host": ctx.host if ctx is not None else None,
        "path": ctx.path if ctx is not None else None,
        "destination_port": request.destination_port,
    }
    logger.info(json.dumps(line, separators=(",", ":")))


def join_headers(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Lower-case names; duplicate headers joined with "," as Envoy does."""
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        prev = out.get(key)
        out[key] = value if prev is None else prev + "," + value
    return out
