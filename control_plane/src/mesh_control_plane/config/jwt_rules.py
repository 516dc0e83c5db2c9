"""Istio RequestAuthentication (YAML dicts) -> the jwt_authn model, as istiod
builds Envoy's JWT providers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from proxyless_mesh.model import ClaimToHeader, JwtAuthentication, JwtHeader, JwtProvider
from proxyless_mesh.policy import PolicyConfigError

from .policy_target import as_mapping, as_sequence, check_keys, target_services

# A JWTRule's fields (also the loader's, parse_security.py). `jwksUri` is
# fetched by the control plane before a config is applied (jwks.py).
JWT_RULE_FIELDS = (
    "issuer",
    "audiences",
    "jwks",
    "jwksUri",
    "fromHeaders",
    "fromParams",
    "fromCookies",
    "forwardOriginalToken",
    "outputClaimToHeaders",
    "outputPayloadToHeader",
    "spaceDelimitedClaims",
)
# Claims istiod always treats as space-delimited (OAuth's `scope`, and `permission`).
DEFAULT_SPACE_DELIMITED_CLAIMS = ("scope", "permission")


def request_authentications_to_jwt(
    resources: Iterable[Mapping[str, Any]], fetched_jwks: Mapping[str, str] | None = None
) -> JwtAuthentication:
    """RequestAuthentications -> jwt_authn providers. `jwksUri` keys are looked
    up in `fetched_jwks` (the control plane fetches them, as istiod does)."""
    providers = []
    for resource in resources:
        meta = as_mapping(resource.get("metadata", {}), "RequestAuthentication.metadata")
        where = f"RequestAuthentication {meta.get('namespace', 'default')}/{meta.get('name', '')}"
        spec = as_mapping(resource.get("spec", {}), f"{where}.spec")
        check_keys(spec, {"selector", "jwtRules", "targetRef", "targetRefs"}, f"{where}.spec")
        target_services(spec, str(meta.get("namespace", "default")), f"{where}.spec")
        for i, rule in enumerate(as_sequence(spec.get("jwtRules") or [], f"{where}.spec.jwtRules")):
            providers.append(
                _jwt_rule(
                    as_mapping(rule, f"{where}.spec.jwtRules[{i}]"),
                    f"{where}.spec.jwtRules[{i}]",
                    fetched_jwks or {},
                )
            )
    return JwtAuthentication(tuple(providers))


def _jwt_rule(rule: Mapping[str, Any], where: str, fetched: Mapping[str, str]) -> JwtProvider:
    check_keys(rule, set(JWT_RULE_FIELDS), where)
    # Without an issuer Istio accepts any `iss` the keys verify (Envoy's empty
    # JwtProvider.issuer); the provider is then named after its rule.
    issuer = str(rule.get("issuer") or "")
    jwks = rule.get("jwks")
    if jwks is None and "jwksUri" in rule:
        jwks = fetched.get(str(rule["jwksUri"]))
        if jwks is None:
            raise PolicyConfigError(f"{where}.jwksUri", "was not fetched by the control plane")
    if jwks is None:
        raise PolicyConfigError(f"{where}.jwks", "is required when jwksUri is not set")
    headers = tuple(
        JwtHeader(str(h["name"]), str(h.get("prefix", "")))
        for h in as_sequence(rule.get("fromHeaders") or [], f"{where}.fromHeaders")
    )
    claims = tuple(
        ClaimToHeader(str(c["header"]), str(c["claim"]))
        for c in as_sequence(
            rule.get("outputClaimToHeaders") or [], f"{where}.outputClaimToHeaders"
        )
    )
    return JwtProvider(
        name=issuer or where,
        issuer=issuer,
        jwks=str(jwks),
        audiences=tuple(str(a) for a in rule.get("audiences") or ()),
        from_headers=headers,
        from_params=tuple(str(p) for p in rule.get("fromParams") or ()),
        from_cookies=tuple(str(c) for c in rule.get("fromCookies") or ()),
        forward=bool(rule.get("forwardOriginalToken", False)),
        claim_to_headers=claims,
        forward_payload_header=str(rule.get("outputPayloadToHeader") or ""),
        space_delimited_claims=_space_delimited(rule, where),
    )


def _space_delimited(rule: Mapping[str, Any], where: str) -> tuple[str, ...]:
    extra = as_sequence(rule.get("spaceDelimitedClaims") or [], f"{where}.spaceDelimitedClaims")
    names = list(DEFAULT_SPACE_DELIMITED_CLAIMS)
    names.extend(str(c) for c in extra if str(c) not in names)
    return tuple(names)
