"""security.istio.io specs -> model objects: PeerAuthentication,
AuthorizationPolicy, RequestAuthentication.

AuthorizationPolicy and RequestAuthentication are checked by the very
translator the control plane uses to build their RBAC and JWT filters
(`proxyless_mesh.policy`), so a policy that loads is one that translates, and
an unsupported key is reported with the file, resource and field it is in.
The envelope (selector, value types) is checked here first, because the
library's translator trusts its caller for those.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from proxyless_mesh.policy import PolicyConfigError

from .authorization import authorization_policy_to_rbac, request_authentications_to_jwt
from .jwt_rules import JWT_RULE_FIELDS
from .model import AuthorizationPolicy, Meta, PeerAuthentication, RequestAuthentication
from .schema import (
    MISSING,
    Problems,
    check_enum,
    check_int,
    check_str,
    get_bool,
    get_list,
    get_object,
    get_str,
    get_str_map,
    index,
    join,
    read_object,
)

__all__ = [
    "MTLS_MODES",
    "parse_authorization_policy",
    "parse_peer_authentication",
    "parse_request_authentication",
]

MTLS_MODES = ("STRICT", "PERMISSIVE", "DISABLE", "UNSET")
_PA_FIELDS = ("selector", "mtls", "portLevelMtls")
_TARGET_REFS = ("targetRef", "targetRefs")  # PeerAuthentication has no policy attachment
_RA_FIELDS = ("selector", "jwtRules", "targetRef", "targetRefs")  # targetRefs: a Service
_JWT_FIELDS = JWT_RULE_FIELDS
_JWT_UNSUPPORTED = ("timeout",)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_AP_FIELDS = ("selector", "action", "rules", "provider", "targetRef", "targetRefs")


def parse_peer_authentication(
    p: Problems, meta: Meta, spec: Mapping[str, Any]
) -> PeerAuthentication:
    spec = read_object(p, spec, "spec", _PA_FIELDS, _TARGET_REFS)
    selector = _selector(p, spec)
    mode = "UNSET"
    mtls = get_object(p, spec, "mtls", "spec", ("mode",))
    if mtls is not None:
        mode = _mode(p, mtls, "spec.mtls")
    port_modes: dict[int, str] = {}
    raw_ports = spec.get("portLevelMtls")
    if raw_ports is not None:
        if not isinstance(raw_ports, Mapping):
            p.add("spec.portLevelMtls", "expected a mapping of port number to {mode}")
        else:
            for key, value in raw_ports.items():
                where = join("spec.portLevelMtls", key)
                number = _port_key(p, key, where)
                settings = read_object(p, value, where, ("mode",))
                if number is not None:
                    port_modes[number] = _mode(p, settings, where)
        if selector is None:
            p.add("spec.portLevelMtls", "requires spec.selector (as in Istio)")
    return PeerAuthentication(meta=meta, selector=selector, mode=mode, port_modes=port_modes)


def parse_authorization_policy(
    p: Problems, meta: Meta, spec: Mapping[str, Any]
) -> AuthorizationPolicy:
    if not isinstance(spec, Mapping):
        read_object(p, spec, "spec", ())  # reports the type
        return AuthorizationPolicy(meta, {})
    read_object(p, spec, "spec", _AP_FIELDS)
    _selector(p, spec)
    action = spec.get("action")
    if action is not None:
        check_str(p, action, "spec.action")
    policy = AuthorizationPolicy(meta, dict(spec))
    try:
        authorization_policy_to_rbac(policy.resource())
    except PolicyConfigError as exc:
        _report(p, meta, exc)
    return policy


def parse_request_authentication(
    p: Problems, meta: Meta, spec: Mapping[str, Any]
) -> RequestAuthentication:
    start = len(p.sink)
    checked = read_object(p, spec, "spec", _RA_FIELDS)
    _selector(p, checked)
    for i, raw in enumerate(get_list(p, checked, "jwtRules", "spec")):
        _jwt_rule(p, raw, index("spec.jwtRules", i))
    resource = RequestAuthentication(meta, dict(spec) if isinstance(spec, Mapping) else {})
    if len(p.sink) == start:  # the translator trusts the shapes checked above
        try:
            request_authentications_to_jwt([resource.resource()], _placeholder_jwks(spec))
        except PolicyConfigError as exc:
            _report(p, meta, exc)
    return resource


def _jwt_rule(p: Problems, raw: object, where: str) -> None:
    rule = read_object(p, raw, where, _JWT_FIELDS, _JWT_UNSUPPORTED)
    uri = get_str(p, rule, "jwksUri", where)
    if uri is not None and urlsplit(uri).scheme not in ("http", "https"):
        p.add(join(where, "jwksUri"), "must be an http:// or https:// URL")
    # No issuer (or ""): any `iss` is accepted, the keys alone decide (as Istio
    # since istio/istio#56158); a rule without jwks or jwksUri is refused below.
    get_str(p, rule, "issuer", where)
    for i, audience in enumerate(get_list(p, rule, "audiences", where)):
        check_str(p, audience, index(join(where, "audiences"), i))
    jwks = get_str(p, rule, "jwks", where)
    if jwks is None and "jwks" not in rule and "jwksUri" not in rule:
        p.schema(join(where, "jwks"), MISSING)
    elif jwks is not None:
        _check_jwks(p, jwks, join(where, "jwks"))
    for i, header in enumerate(get_list(p, rule, "fromHeaders", where)):
        item_where = index(join(where, "fromHeaders"), i)
        item = read_object(p, header, item_where, ("name", "prefix"))
        if get_str(p, item, "name", item_where, required=True) == "":
            p.add(join(item_where, "name"), "must not be empty")
        get_str(p, item, "prefix", item_where)
    for i, param in enumerate(get_list(p, rule, "fromParams", where)):
        check_str(p, param, index(join(where, "fromParams"), i))
    get_bool(p, rule, "forwardOriginalToken", where)
    for i, claim in enumerate(get_list(p, rule, "outputClaimToHeaders", where)):
        item_where = index(join(where, "outputClaimToHeaders"), i)
        item = read_object(p, claim, item_where, ("header", "claim"))
        get_str(p, item, "header", item_where, required=True)
        get_str(p, item, "claim", item_where, required=True)
    claims = get_list(p, rule, "spaceDelimitedClaims", where)
    if len(claims) > 64:  # Istio's CRD: maxItems 64, each minLength 1
        p.add(join(where, "spaceDelimitedClaims"), f"at most 64 claims, got {len(claims)}")
    for i, claim in enumerate(claims):
        if check_str(p, claim, index(join(where, "spaceDelimitedClaims"), i)) == "":
            p.add(index(join(where, "spaceDelimitedClaims"), i), "must not be empty")
    payload_header = get_str(p, rule, "outputPayloadToHeader", where)
    if payload_header is not None and not _HEADER_NAME.fullmatch(payload_header.lower()):
        p.add(join(where, "outputPayloadToHeader"), f"invalid header name {payload_header!r}")


def _placeholder_jwks(spec: Mapping[str, Any]) -> dict[str, str]:
    """Stand-in keys for the jwksUri rules, so the rest of each rule is checked
    at load time; the real keys are fetched later, when the config is applied."""
    rules = spec.get("jwtRules") or []
    return {rule["jwksUri"]: '{"keys": []}' for rule in rules if "jwksUri" in rule}


def _check_jwks(p: Problems, text: str, where: str) -> None:
    """A JWKS document: a JSON object with a `keys` list (RFC 7517)."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        p.add(where, f"is not valid JSON: {exc}")
        return
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        p.add(where, 'must be a JWKS document: a JSON object with a "keys" list')


def _selector(p: Problems, spec: Mapping[str, Any]) -> dict[str, str] | None:
    """`selector.matchLabels`, or None when there is no selector."""
    selector = get_object(p, spec, "selector", "spec", ("matchLabels",))
    if selector is None:
        return None
    return get_str_map(p, selector, "matchLabels", "spec.selector")


def _mode(p: Problems, obj: Mapping[str, Any], where: str) -> str:
    text = get_str(p, obj, "mode", where)
    if text is None:
        return "UNSET"
    return check_enum(p, text, join(where, "mode"), MTLS_MODES) or "UNSET"


def _port_key(p: Problems, key: object, where: str) -> int | None:
    """portLevelMtls keys are port numbers (YAML may give them as strings)."""
    if isinstance(key, str) and key.isdigit():
        key = int(key)
    return check_int(p, key, where, low=1, high=65535)


def _report(p: Problems, meta: Meta, exc: PolicyConfigError) -> None:
    """A problem from the library's translator, located in this resource: its
    `field` starts with "<Kind> <ns>/<name>." which the resource already says."""
    prefix = f"{meta.kind} {meta.namespace}/{meta.name}."
    field = exc.field[len(prefix) :] if exc.field.startswith(prefix) else exc.field
    message = str(exc)
    if message.startswith(f"{exc.field}: "):
        message = message[len(exc.field) + 2 :]
    p.add(field, message)
