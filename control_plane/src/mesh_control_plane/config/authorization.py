"""Istio AuthorizationPolicy / RequestAuthentication (YAML dicts) -> RBAC model.

A pure function of its inputs, made the way istiod builds the RBAC filters:
- one RBAC engine per action, in the order LOG (AUDIT), DENY, ALLOW; the ALLOW
  engine exists as soon as one ALLOW policy exists, even with no rules, so
  `spec: {}` (allow-nothing) denies everything; `rules: [{}]` allows all;
- one RBAC policy per rule, named `ns[<ns>]-policy[<name>]-rule[<i>]`;
- a rule = (any of `from`) AND (any of `to`) AND (every `when`); within one
  source/operation every field must match; a field matches if any value
  does; `notX` becomes a `not_rule` over the values;
- principals get the `spiffe://` prefix (Istio writes
  `cluster.local/ns/x/sa/y`); namespaces become the principal regex
  `.*/ns/<ns>/.*`, serviceAccounts (`<ns>/<sa>`) `spiffe://<any>/ns/<ns>/sa/<sa>`;
  values take `*` as "any", `prefix*` and `*suffix`; paths with `{*}`/`{**}`
  are Envoy uri templates, sent as the equivalent regex;
- hosts match case-insensitively on the normalized authority, which has no
  port: a port written in a policy host is dropped (`foo.com:*` -> `foo.com`).
  An Envoy that enforces this RBAC needs HCM `strip_any_host_port: true`.

Anything the mesh does not enforce raises UnsupportedPolicyError naming the
field: a policy is applied entirely or not at all.

It lives in the control plane's config layer: loading validates a policy by
translating it, `translate.inbound` emits the result; the library only ever
sees the model (decoded from xDS), never the Istio YAML.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from proxyless_mesh.model import (
    AndRules,
    AnyRule,
    Authenticated,
    CidrRange,
    DestinationIp,
    DestinationPort,
    DirectRemoteIp,
    ExtAuthz,
    HeaderMatcher,
    MatchKind,
    Metadata,
    NotRule,
    OrRules,
    Policy,
    Rbac,
    RbacAction,
    RbacRule,
    RemoteIp,
    RequestedServerName,
    StringMatcher,
    UrlPath,
)
from proxyless_mesh.policy import PolicyConfigError, UnsupportedPolicyError

from .jwt_rules import request_authentications_to_jwt
from .policy_target import as_mapping, as_sequence, check_keys, selects_workload, target_services

__all__ = [
    "authorization_policies_to_rbac",
    "authorization_policy_to_rbac",
    "custom_provider",
    "is_dry_run",
    "path_template_regex",
    "request_authentications_to_jwt",
    "selects_workload",
    "target_services",
]

SPIFFE_PREFIX = "spiffe://"
AUTHN_FILTER = "istio_authn"
_ACTIONS = {"ALLOW": RbacAction.ALLOW, "DENY": RbacAction.DENY, "AUDIT": RbacAction.LOG}
_SPEC_KEYS = {"selector", "action", "rules"}
_RULE_KEYS = {"from", "to", "when"}
_SOURCE_FIELDS = (
    "principals",
    "requestPrincipals",
    "namespaces",
    "serviceAccounts",
    "ipBlocks",
    "remoteIpBlocks",
)
_OPERATION_FIELDS = ("hosts", "ports", "methods", "paths")
CUSTOM_PREFIX = "istio-ext-authz-"


def authorization_policies_to_rbac(
    policies: Iterable[Mapping[str, Any]], providers: Mapping[str, ExtAuthz] | None = None
) -> tuple[Rbac, ...]:
    """The RBAC engines (LOG, DENY, ALLOW; only those needed) for the
    AuthorizationPolicies that apply to one workload (selection is the
    caller's: see `selects_workload`).

    A policy annotated `istio.io/dry-run: "true"` goes into a shadow engine
    (placed just before the engine of its action, as Envoy's `shadow_rules`
    run before `rules`) and never changes a decision: a dry-run ALLOW alone
    creates no enforcing ALLOW engine. A dry-run AUDIT policy is dropped
    (AUDIT never decides; in dry-run it does not even log).

    CUSTOM policies (their provider in `providers`, the mesh config's
    extension providers) make one engine first, as istiod puts the ext_authz
    filter before the RBAC ones; their rules are named with Istio's
    `istio-ext-authz-` prefix. Istio allows one provider per workload: with
    several, the requests CUSTOM policies match are denied (fail closed)."""
    by_action: dict[RbacAction, list[tuple[str, Policy]]] = {a: [] for a in RbacAction}
    shadow: dict[RbacAction, list[tuple[str, Policy]]] = {a: [] for a in RbacAction}
    custom: list[tuple[str, Policy]] = []
    used: dict[str, ExtAuthz] = {}
    has_allow = False
    for i, resource in enumerate(policies):
        action, named = authorization_policy_to_rbac(resource, where=f"policies[{i}]")
        provider = custom_provider(resource, providers or {})
        if provider is not None:
            custom.extend((CUSTOM_PREFIX + name, policy) for name, policy in named)
            used[provider[0]] = provider[1]
            continue
        if is_dry_run(resource):
            shadow[action].extend(named)
            continue
        has_allow = has_allow or action is RbacAction.ALLOW
        by_action[action].extend(named)
    engines = []
    if len(used) == 1:
        engines.append(Rbac(RbacAction.ALLOW, tuple(custom), ext_authz=next(iter(used.values()))))
    elif used:
        by_action[RbacAction.DENY][:0] = custom
    if by_action[RbacAction.LOG]:
        engines.append(Rbac(RbacAction.LOG, tuple(by_action[RbacAction.LOG])))
    for action in (RbacAction.DENY, RbacAction.ALLOW):
        if shadow[action]:
            engines.append(Rbac(action, tuple(shadow[action]), shadow=True))
        if by_action[action] or (action is RbacAction.ALLOW and has_allow):
            engines.append(Rbac(action, tuple(by_action[action])))
    return tuple(engines)


DRY_RUN_ANNOTATION = "istio.io/dry-run"


def custom_provider(
    resource: Mapping[str, Any], providers: Mapping[str, ExtAuthz]
) -> tuple[str, ExtAuthz] | None:
    """A CUSTOM policy's provider (name, config); None for other actions.
    PolicyConfigError when the provider is not one of `providers`."""
    spec = resource.get("spec") or {}
    if spec.get("action") != "CUSTOM":
        return None
    meta = resource.get("metadata") or {}
    where = f"AuthorizationPolicy {meta.get('namespace', 'default')}/{meta.get('name', '')}"
    name = str((spec.get("provider") or {}).get("name", ""))
    if name not in providers:
        known = ", ".join(sorted(providers)) or "none"
        raise PolicyConfigError(
            f"{where}.spec.provider.name",
            f"extension provider {name!r} is not defined in the mesh config's "
            f"extensionProviders (defined: {known})",
        )
    return name, providers[name]


def is_dry_run(resource: Mapping[str, Any]) -> bool:
    """Istio's dry-run annotation; its value is parsed as a boolean ("true", "True", "1")."""
    meta = resource.get("metadata") or {}
    annotations = meta.get("annotations") or {} if isinstance(meta, Mapping) else {}
    value = annotations.get(DRY_RUN_ANNOTATION) if isinstance(annotations, Mapping) else None
    return str(value).lower() in ("true", "1", "t")


def authorization_policy_to_rbac(
    resource: Mapping[str, Any], where: str = "AuthorizationPolicy"
) -> tuple[RbacAction, list[tuple[str, Policy]]]:
    """One AuthorizationPolicy -> its action and its named RBAC policies."""
    meta = as_mapping(resource.get("metadata", {}), f"{where}.metadata")
    name = str(meta.get("name", ""))
    namespace = str(meta.get("namespace", "default"))
    where = f"AuthorizationPolicy {namespace}/{name}"
    spec = as_mapping(resource.get("spec", {}), f"{where}.spec")
    check_keys(spec, _SPEC_KEYS | {"provider", "targetRef", "targetRefs"}, f"{where}.spec")
    target_services(spec, namespace, f"{where}.spec")
    action_name = str(spec.get("action", "ALLOW"))
    if action_name == "CUSTOM":
        _check_custom(resource, spec, where)
        action_name = "ALLOW"  # the rules say which requests go to the provider
    elif "provider" in spec:
        raise PolicyConfigError(f"{where}.spec.provider", "is only for action CUSTOM")
    if action_name not in _ACTIONS:
        raise UnsupportedPolicyError(f"{where}.spec.action", f"{action_name!r} is not supported")
    rules = spec.get("rules") or []
    named = []
    for r, rule in enumerate(as_sequence(rules, f"{where}.spec.rules")):
        policy = _rule(as_mapping(rule, f"{where}.spec.rules[{r}]"), f"{where}.spec.rules[{r}]")
        named.append((f"ns[{namespace}]-policy[{name}]-rule[{r}]", policy))
    return _ACTIONS[action_name], named


def _check_custom(resource: Mapping[str, Any], spec: Mapping[str, Any], where: str) -> None:
    provider = as_mapping(spec.get("provider") or {}, f"{where}.spec.provider")
    check_keys(provider, {"name"}, f"{where}.spec.provider")
    if not provider.get("name"):
        raise PolicyConfigError(f"{where}.spec.provider.name", "is required for action CUSTOM")
    if is_dry_run(resource):  # Istio's dry-run supports ALLOW and DENY only
        raise UnsupportedPolicyError(
            f"{where}.metadata.annotations[{DRY_RUN_ANNOTATION}]",
            "dry-run is supported for ALLOW and DENY policies only (as in Istio), not CUSTOM",
        )


def _rule(rule: Mapping[str, Any], where: str) -> Policy:
    check_keys(rule, _RULE_KEYS, where)
    principals: list[RbacRule] = []
    permissions: list[RbacRule] = []
    sources = _clauses(rule, "from", "source", _source, where)
    if sources:
        principals.append(_or(sources))
    operations = _clauses(rule, "to", "operation", _operation, where)
    if operations:
        permissions.append(_or(operations))
    for i, cond in enumerate(as_sequence(rule.get("when") or [], f"{where}.when")):
        is_permission, node = _condition(
            as_mapping(cond, f"{where}.when[{i}]"), f"{where}.when[{i}]"
        )
        (permissions if is_permission else principals).append(node)
    return Policy(permissions=(_and(permissions),), principals=(_and(principals),))


def _clauses(
    rule: Mapping[str, Any],
    key: str,
    inner: str,
    parse: Callable[[Mapping[str, Any], str], RbacRule],
    where: str,
) -> list[RbacRule]:
    """`from[].source` or `to[].operation`: each item's one key, parsed."""
    out = []
    for i, item in enumerate(as_sequence(rule.get(key) or [], f"{where}.{key}")):
        item_where = f"{where}.{key}[{i}]"
        item = as_mapping(item, item_where)
        check_keys(item, {inner}, item_where)
        inner_where = f"{item_where}.{inner}"
        out.append(parse(as_mapping(item.get(inner, {}), inner_where), inner_where))
    return out


def _source(source: Mapping[str, Any], where: str) -> RbacRule:
    allowed = set(_SOURCE_FIELDS) | {"not" + f[0].upper() + f[1:] for f in _SOURCE_FIELDS}
    check_keys(source, allowed, where)
    accounts = [k for k in ("serviceAccounts", "notServiceAccounts") if source.get(k)]
    others = [k for k in ("principals", "notPrincipals", "namespaces", "notNamespaces")]
    if accounts and any(source.get(k) for k in others):  # Istio's validation
        raise PolicyConfigError(
            f"{where}.{accounts[0]}", "cannot be set together with principals or namespaces"
        )
    makers = {
        "principals": _principal,
        "requestPrincipals": _request_principal,
        "namespaces": _namespace,
        "serviceAccounts": _service_account,
        "ipBlocks": lambda v, w: DirectRemoteIp(_cidr(v, w)),
        "remoteIpBlocks": lambda v, w: RemoteIp(_cidr(v, w)),
    }
    return _fields(source, makers, where)


def _operation(op: Mapping[str, Any], where: str) -> RbacRule:
    allowed = set(_OPERATION_FIELDS) | {"not" + f[0].upper() + f[1:] for f in _OPERATION_FIELDS}
    check_keys(op, allowed, where)
    makers = {
        "hosts": _host,
        "ports": lambda v, w: DestinationPort(_port(v, w)),
        "methods": lambda v, w: HeaderMatcher(":method", StringMatcher(MatchKind.EXACT, str(v))),
        "paths": _path,
    }
    return _fields(op, makers, where)


def _fields(block: Mapping[str, Any], makers: Mapping[str, Any], where: str) -> RbacRule:
    parts: list[RbacRule] = []
    for field, make in makers.items():
        for key, negate in ((field, False), ("not" + field[0].upper() + field[1:], True)):
            values = as_sequence(block.get(key) or [], f"{where}.{key}")
            if not values:
                continue
            node = _or([make(v, f"{where}.{key}[{i}]") for i, v in enumerate(values)])
            parts.append(NotRule(node) if negate else node)
    return _and(parts)


def _condition(cond: Mapping[str, Any], where: str) -> tuple[bool, RbacRule]:
    """A `when` entry -> (goes to permissions?, rule)."""
    check_keys(cond, {"key", "values", "notValues"}, where)
    key = str(cond.get("key", ""))
    values = as_sequence(cond.get("values") or [], f"{where}.values")
    not_values = as_sequence(cond.get("notValues") or [], f"{where}.notValues")
    if not values and not not_values:
        raise PolicyConfigError(where, f"condition {key!r} needs values or notValues")
    is_permission, make = _condition_maker(key, f"{where}.key")
    parts: list[RbacRule] = []
    if values:
        parts.append(_or([make(v, f"{where}.values[{i}]") for i, v in enumerate(values)]))
    if not_values:
        node = _or([make(v, f"{where}.notValues[{i}]") for i, v in enumerate(not_values)])
        parts.append(NotRule(node))
    return is_permission, _and(parts)


def _condition_maker(key: str, where: str) -> tuple[bool, Any]:
    simple: dict[str, tuple[bool, Any]] = {
        "source.ip": (False, lambda v, w: DirectRemoteIp(_cidr(v, w))),
        "remote.ip": (False, lambda v, w: RemoteIp(_cidr(v, w))),
        "source.namespace": (False, _namespace),
        "source.principal": (False, _principal),
        "request.auth.principal": (False, _request_principal),
        "request.auth.audiences": (False, _metadata_maker(("request.auth.audiences",), True)),
        "request.auth.presenter": (False, _metadata_maker(("request.auth.presenter",), False)),
        "destination.ip": (True, lambda v, w: DestinationIp(_cidr(v, w))),
        "destination.port": (True, lambda v, w: DestinationPort(_port(v, w))),
        "connection.sni": (True, lambda v, w: RequestedServerName(_string(str(v)))),
    }
    if key in simple:
        return simple[key]
    match = re.fullmatch(r"request\.headers\[([^\[\]]+)\]", key)
    if match:
        name = match.group(1).lower()
        return False, lambda v, w: HeaderMatcher(name, _string(str(v), wildcard_present=True))
    match = re.fullmatch(r"request\.auth\.claims((?:\[[^\[\]]+\])+)", key)
    if match:
        path = ("request.auth.claims", *re.findall(r"\[([^\[\]]+)\]", match.group(1)))
        return False, _metadata_maker(path, True)
    raise UnsupportedPolicyError(where, f"condition key {key!r} is not supported")


def _metadata_maker(path: tuple[str, ...], list_match: bool) -> Any:
    return lambda v, w: Metadata(AUTHN_FILTER, path, _string(str(v)), list_match=list_match)


def _string(
    v: str,
    *,
    prefix: str = "",
    required: bool = False,
    wildcard_present: bool = False,
    ignore_case: bool = False,
) -> StringMatcher:
    """Istio's wildcard rule: `*` any (`.+` when the value is required),
    `*suffix`, `prefix*`, else exact; `prefix` is prepended (spiffe://)."""
    if v == "*":
        if wildcard_present:
            return StringMatcher(MatchKind.PRESENT)
        return StringMatcher(MatchKind.REGEX, ".+" if required else ".*")
    if v.startswith("*"):
        if prefix:
            return StringMatcher(MatchKind.REGEX, re.escape(prefix) + ".*" + re.escape(v[1:]))
        return StringMatcher(MatchKind.SUFFIX, v[1:], ignore_case)
    if v.endswith("*"):
        return StringMatcher(MatchKind.PREFIX, prefix + v[:-1], ignore_case)
    return StringMatcher(MatchKind.EXACT, prefix + v, ignore_case)


def _principal(v: Any, where: str) -> RbacRule:
    return Authenticated(_string(str(v), prefix=SPIFFE_PREFIX, required=True))


def _request_principal(v: Any, where: str) -> RbacRule:
    matcher = _string(str(v), required=True)
    return Metadata(AUTHN_FILTER, ("request.auth.principal",), matcher)


def _namespace(v: Any, where: str) -> RbacRule:
    ns = re.escape(str(v)).replace(r"\*", ".*")
    return Authenticated(StringMatcher(MatchKind.REGEX, f".*/ns/{ns}/.*"))


def _service_account(v: Any, where: str) -> RbacRule:
    """`<namespace>/<name>`: that Kubernetes service account in any trust domain."""
    namespace, _, name = str(v).partition("/")
    if not namespace or not name or "/" in name or "*" in str(v):
        raise PolicyConfigError(where, f"expected <namespace>/<service account>, got {v!r}")
    ns, sa = re.escape(namespace), re.escape(name)
    return Authenticated(StringMatcher(MatchKind.REGEX, f"spiffe://[^/]+/ns/{ns}/sa/{sa}"))


def _host(v: Any, where: str) -> RbacRule:
    host = str(v).lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1] if "]" in host else host
    elif ":" in host:
        host = host.split(":", 1)[0]
    host = host.rstrip(".") or "*"
    return HeaderMatcher(":authority", _string(host, wildcard_present=True, ignore_case=True))


def _path(v: Any, where: str) -> RbacRule:
    path = str(v)
    if "{" in path or "}" in path:
        return UrlPath(StringMatcher(MatchKind.REGEX, path_template_regex(path, where)))
    return UrlPath(_string(path))


# Envoy's uri_template (what istiod sends for a path with `{*}` or `{**}`):
# `{*}` is one path segment of at least one character, `{**}` any rest (zero or
# more segments, slashes included). The same matching is sent as a regex here.
_SEGMENT = "[a-zA-Z0-9\\-._~%!$&'()+,;:@=]"


def path_template_regex(path: str, where: str) -> str:
    """The regex of an Istio path template, or PolicyConfigError as Istio's
    validation refuses it: an operator must be a whole segment, `{**}` the last
    operator, and no other `*`, `{` or `}`."""
    parts: list[str] = []
    seen_rest = False
    for segment in path.split("/"):
        if segment in ("{*}", "{**}"):
            if seen_rest:
                raise PolicyConfigError(where, f"{path!r}: {{**}} must be the last operator")
            seen_rest = segment == "{**}"
            parts.append(f"{_SEGMENT}+" if segment == "{*}" else f"[{_SEGMENT[1:-1]}/]*")
        elif any(c in segment for c in "*{}"):
            raise PolicyConfigError(
                where, f"{path!r}: {{*}} and {{**}} must each be a whole path segment"
            )
        else:
            parts.append(re.escape(segment))
    return "/".join(parts)


def _port(v: Any, where: str) -> int:
    try:
        port = int(str(v))
    except ValueError:
        raise PolicyConfigError(where, f"invalid port {v!r}") from None
    if not 0 < port < 65536:
        raise PolicyConfigError(where, f"port {port} out of range")
    return port


def _cidr(v: Any, where: str) -> CidrRange:
    try:
        net = ipaddress.ip_network(str(v), strict=False)
    except ValueError:
        raise PolicyConfigError(where, f"invalid IP or CIDR {v!r}") from None
    return CidrRange(str(net.network_address), net.prefixlen)


def _or(nodes: Sequence[RbacRule]) -> RbacRule:
    return nodes[0] if len(nodes) == 1 else OrRules(tuple(nodes))


def _and(nodes: Sequence[RbacRule]) -> RbacRule:
    if not nodes:
        return AnyRule()
    return nodes[0] if len(nodes) == 1 else AndRules(tuple(nodes))
