"""JWT request authentication (Istio RequestAuthentication, Envoy jwt_authn).

Verification is PyJWT's; this module only decides which token to verify
against which provider, the way Envoy's jwt_authn does for Istio:
- tokens are looked for in each provider's locations (default: the
  `Authorization: Bearer` header and the `access_token` query parameter);
- no token anywhere -> no request principal (the policies decide);
- a token present in a location -> it must verify against a provider that
  uses that location and whose issuer is the token's `iss` or that has no
  issuer (Istio's JWTRule without `issuer`: any `iss`), else 401; as Envoy's
  `requires_any`, any such provider may accept it, those naming the issuer
  tried first (their claim headers apply when several would accept);
- only asymmetric algorithms are accepted (`none` and HMAC are refused, which
  also closes the RS256/HS256 key-confusion trick);
- `exp`/`nbf` are checked with the provider's clock skew (60 s by default);
- audiences, when configured, must intersect the token's `aud`;
- more than one distinct token in one request -> 401 (Istio leaves the
  principal of such a request undefined; refusing is the safe reading).
On success the request principal is `iss/sub` (none when the token lacks
either, as Istio), the token is removed unless `forward`, and configured
claims are copied to headers (incoming copies of those headers are always
removed so a client cannot forge them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

if TYPE_CHECKING:
    import jwt

from proxyless_mesh.model import JwtAuthentication, JwtHeader, JwtProvider
from proxyless_mesh.policy._errors import PolicyConfigError

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
ISTIO_AUTHN = "istio_authn"
_DEFAULT_HEADER = JwtHeader(name="authorization", value_prefix="Bearer ")
_DEFAULT_PARAM = "access_token"


class JwtAuthError(Exception):
    """Internal: why a presented token was refused (becomes a 401). The
    reason never contains the token."""


@dataclass(frozen=True, slots=True)
class JwtResult:
    """A verified token: what RBAC and the app may see of it."""

    principal: str  # "" when the token has no `iss` or no `sub`
    claims: Mapping[str, object]
    remove_headers: frozenset[str]
    remove_params: frozenset[str]
    add_headers: tuple[tuple[str, str], ...]

    def metadata(self) -> dict[str, object]:
        """Istio's `istio_authn` dynamic metadata for this token."""
        aud = self.claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else list(aud) if isinstance(aud, list) else []
        meta: dict[str, object] = {
            "request.auth.audiences": audiences,
            "request.auth.claims": self.claims,
        }
        if self.principal:  # Istio: none unless the token has both `iss` and `sub`
            meta["request.auth.principal"] = self.principal
        if isinstance(self.claims.get("azp"), str):
            meta["request.auth.presenter"] = self.claims["azp"]
        return meta


@dataclass(frozen=True, slots=True)
class _CompiledProvider:
    provider: JwtProvider
    keys: tuple[tuple[str | None, str | None, jwt.PyJWK], ...]  # (kid, declared alg, key)
    headers: tuple[JwtHeader, ...]
    params: tuple[str, ...]
    cookies: tuple[str, ...]


class JwtAuthenticator:
    """Providers compiled once (JWKS parsed); `authenticate` per request."""

    def __init__(self, config: JwtAuthentication) -> None:
        compiled = []
        for i, p in enumerate(config.providers):
            where = f"jwt provider {p.name or i}"
            keys = _parse_jwks(p.jwks, f"{where}.jwks")
            headers = tuple(JwtHeader(h.name.lower(), h.value_prefix) for h in p.from_headers)
            params = p.from_params
            if not headers and not params and not p.from_cookies:
                headers, params = (_DEFAULT_HEADER,), (_DEFAULT_PARAM,)
            compiled.append(_CompiledProvider(p, keys, headers, params, p.from_cookies))
        self._providers = tuple(compiled)
        # Headers only a verified token may set: incoming copies are removed.
        self.claim_headers = frozenset(
            c.header_name.lower() for p in config.providers for c in p.claim_to_headers
        ) | {p.forward_payload_header.lower() for p in config.providers if p.forward_payload_header}

    @property
    def enabled(self) -> bool:
        return bool(self._providers)

    def authenticate(self, headers: Mapping[str, str], query: str) -> JwtResult | None:
        """Return the verified token, None if there is none; raise JwtAuthError."""
        params = _parse_query(query) if query else {}
        found: dict[str, list[tuple[_CompiledProvider, str | None, str | None]]] = {}
        for cp in self._providers:
            for h in cp.headers:
                value = headers.get(h.name)
                if value is None:
                    continue
                prefix = h.value_prefix
                if prefix and value[: len(prefix)].lower() != prefix.lower():
                    continue
                token = value[len(prefix) :].strip()
                found.setdefault(token, []).append((cp, h.name, None))
            for name in cp.params:
                for token in params.get(name, ()):
                    found.setdefault(token, []).append((cp, None, name))
            if cp.cookies:
                jar = _cookies(headers.get("cookie", ""))
                for name in cp.cookies:
                    cookie = jar.get(name)
                    if cookie:  # a cookie is never removed from the request (as Envoy)
                        found.setdefault(cookie, []).append((cp, None, None))
        if not found:
            return None
        if len(found) > 1:
            raise JwtAuthError("more than one JWT in the request")
        ((token, candidates),) = found.items()
        return _verify(token, candidates)


def _cookies(header: str) -> dict[str, str]:
    """`Cookie: a=1; b=2` -> {"a": "1", "b": "2"} (first of a repeated name wins)."""
    jar: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in jar:
            jar[name] = value.strip().strip('"')
    return jar


def _verify(
    token: str, candidates: list[tuple[_CompiledProvider, str | None, str | None]]
) -> JwtResult:
    import jwt  # PyJWT (and cryptography) load with the first JWT policy (issue 25)

    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise JwtAuthError("malformed JWT") from exc
    alg = header.get("alg")
    if alg not in ASYMMETRIC_ALGORITHMS:
        raise JwtAuthError(f"JWT algorithm {alg!r} is not accepted")
    issuer = unverified.get("iss")
    named = [c for c in candidates if c[0].provider.issuer and c[0].provider.issuer == issuer]
    matching = named + [c for c in candidates if not c[0].provider.issuer]
    if not matching:
        raise JwtAuthError("JWT issuer is not configured for this location")
    failures: list[JwtAuthError] = []
    tried: list[_CompiledProvider] = []
    for cp, _, _ in matching:
        if any(cp is seen for seen in tried):  # one provider, several locations
            continue
        tried.append(cp)
        try:
            claims = _verify_claims(token, header, cp)
        except JwtAuthError as exc:
            failures.append(exc)
            continue
        return _result(token, claims, cp.provider, matching)
    raise failures[0]  # the reason of the provider naming the issuer, if one does


def _verify_claims(
    token: str, header: Mapping[str, object], cp: _CompiledProvider
) -> dict[str, object]:
    """Signature, time and issuer (PyJWT), then the provider's audiences."""
    claims = _verify_signature(token, header, cp)
    audiences = cp.provider.audiences
    if audiences:
        aud = claims.get("aud")
        token_auds = {aud} if isinstance(aud, str) else set(aud) if isinstance(aud, list) else set()
        if not token_auds.intersection(audiences):
            raise JwtAuthError("JWT audience is not allowed")
    return claims


def _result(
    token: str,
    claims: dict[str, object],
    p: JwtProvider,
    matching: list[tuple[_CompiledProvider, str | None, str | None]],
) -> JwtResult:
    remove_headers = {n for c, n, _ in matching if n is not None and not c.provider.forward}
    remove_params = {n for c, _, n in matching if n is not None and not c.provider.forward}
    add = []
    for c in p.claim_to_headers:
        value = claims.get(c.claim_name)
        if isinstance(value, bool):
            add.append((c.header_name.lower(), "true" if value else "false"))
        elif isinstance(value, int | float) or (isinstance(value, str) and value.isprintable()):
            add.append((c.header_name.lower(), str(value)))
    if p.forward_payload_header:  # the token's own payload segment, as Envoy forwards it
        add.append((p.forward_payload_header.lower(), token.split(".")[1].rstrip("=")))
    iss, sub = claims.get("iss"), claims.get("sub")
    principal = f"{iss}/{sub}" if isinstance(iss, str) and isinstance(sub, str) else ""
    return JwtResult(
        principal,
        _split_claims(claims, p.space_delimited_claims),
        frozenset(remove_headers),
        frozenset(remove_params),
        tuple(add),
    )


def _split_claims(claims: dict[str, object], names: tuple[str, ...]) -> dict[str, object]:
    """Envoy's normalize_payload_in_metadata: a listed claim whose value is a
    string becomes the list of its space-separated words (what RBAC matches)."""
    split = {n: v.split() for n in names if isinstance(v := claims.get(n), str)}
    return {**claims, **split} if split else claims


def _verify_signature(
    token: str, header: Mapping[str, object], cp: _CompiledProvider
) -> dict[str, object]:
    import jwt

    alg = str(header["alg"])
    kid = header.get("kid")
    keys = [k for k_kid, k_alg, k in cp.keys if kid in (None, k_kid) and k_alg in (None, alg)]
    if not keys:
        raise JwtAuthError("no JWKS key matches the JWT's kid and alg")
    p = cp.provider
    last: Exception | None = None
    for key in keys:
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                issuer=p.issuer or None,
                leeway=p.clock_skew_seconds,
                options={"verify_aud": False},
            )
        except jwt.PyJWTError as exc:
            last = exc
            continue
        return claims
    reason = type(last).__name__ if last is not None else "no usable key"
    raise JwtAuthError(f"JWT verification failed: {reason}")


def _parse_jwks(text: str, where: str) -> tuple[tuple[str | None, str | None, jwt.PyJWK], ...]:
    """Parse a JWKS document, keeping asymmetric signing keys only."""
    import jwt

    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise PolicyConfigError(where, f"JWKS is not JSON: {exc}") from exc
    raw_keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(raw_keys, list):
        raise PolicyConfigError(where, "JWKS has no 'keys' list")
    keys = []
    for i, k in enumerate(raw_keys):
        if not isinstance(k, dict) or k.get("kty") == "oct" or k.get("use", "sig") != "sig":
            continue
        declared = k.get("alg")
        if declared is not None and declared not in ASYMMETRIC_ALGORITHMS:
            continue
        try:
            key = jwt.PyJWK(k)
        except jwt.PyJWTError as exc:
            raise PolicyConfigError(f"{where}.keys[{i}]", f"unusable key: {exc}") from exc
        kid = k.get("kid")
        keys.append((kid if isinstance(kid, str) else None, declared, key))
    if not keys:
        raise PolicyConfigError(where, "JWKS has no usable asymmetric signing key")
    return tuple(keys)


def _parse_query(query: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in query.split("&"):
        name, sep, value = part.partition("=")
        if sep:
            out.setdefault(unquote_plus(name), []).append(unquote_plus(value))
    return out


def strip_params(query: str, names: frozenset[str]) -> str:
    """The query string without the parameters `names` (raw otherwise)."""
    if not names:
        return query
    kept = [p for p in query.split("&") if unquote_plus(p.partition("=")[0]) not in names]
    return "&".join(kept)
