"""RequestAuthentication: which tokens pass, which get 401, what the app sees."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2
from mesh_control_plane.config.authorization import (
    authorization_policies_to_rbac,
    request_authentications_to_jwt,
)
from mesh_control_plane.translate.rbac_protos import jwt_authentication_to_proto
from wire_support import as_wire

from proxyless_mesh.policy import InboundRequest, PolicySet
from proxyless_mesh.xds_client._decode_rbac import jwt_authentication_from_proto

ISSUER = "https://issuer.example"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _jwks() -> str:
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key()))
    rsa_jwk.update(kid="rsa1", alg="RS256")
    ec_jwk.update(kid="ec1")
    return json.dumps({"keys": [rsa_jwk, ec_jwk]})


JWKS = _jwks()


def token(key: Any = RSA_KEY, alg: str = "RS256", kid: str = "rsa1", **claims: Any) -> str:
    body = {"iss": ISSUER, "sub": "alice", "aud": "api", "exp": int(time.time()) + 86400}
    body.update(claims)
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def unsigned(**claims: Any) -> str:
    body = {"iss": ISSUER, "sub": "alice", "aud": "api", "exp": int(time.time()) + 86400, **claims}
    return jwt.encode(body, None, algorithm="none")


def reqauth(**rule: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"issuer": ISSUER, "jwks": JWKS, "audiences": ["api"]}
    base.update(rule)
    return {"metadata": {"name": "jwt", "namespace": "foo"}, "spec": {"jwtRules": [base]}}


def check(policies: PolicySet, headers: dict[str, str], target: bytes = b"/") -> Any:
    return policies.check(InboundRequest("GET", target, {"host": "svc", **headers}))


@pytest.fixture
def ps() -> PolicySet:
    return PolicySet(jwt=request_authentications_to_jwt([reqauth()]))


def test_valid_token_passes_and_is_stripped(ps: PolicySet) -> None:
    d = check(ps, {"authorization": f"Bearer {token()}"})
    assert d.status == 200
    assert "authorization" in d.remove_headers


def test_ec_token_with_kid_passes(ps: PolicySet) -> None:
    assert check(ps, {"authorization": f"Bearer {token(EC_KEY, 'ES256', 'ec1')}"}).status == 200


def test_absent_token_passes_without_principal(ps: PolicySet) -> None:
    assert check(ps, {}).status == 200
    assert check(ps, {"authorization": "Basic dXNlcjpwYXNz"}).status == 200


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: unsigned(), id="alg-none"),
        pytest.param(lambda: token(exp=int(time.time()) - 3600), id="expired"),
        pytest.param(lambda: token(nbf=int(time.time()) + 3600), id="not-yet-valid"),
        pytest.param(lambda: token(iss="https://evil.example"), id="wrong-issuer"),
        pytest.param(lambda: token(aud="other"), id="wrong-audience"),
        pytest.param(lambda: token(OTHER_KEY), id="bad-signature"),
        pytest.param(lambda: token(kid="unknown"), id="unknown-kid"),
        pytest.param(lambda: token()[:-4] + "AAAA", id="tampered"),
        pytest.param(lambda: "not.a.jwt", id="garbage"),
        pytest.param(lambda: "", id="empty"),
        pytest.param(
            lambda: jwt.encode({"iss": ISSUER, "sub": "x", "aud": "api"}, "s" * 32, "HS256"),
            id="hmac",
        ),
    ],
)
def test_present_and_invalid_token_is_401(ps: PolicySet, bad: Any) -> None:
    assert check(ps, {"authorization": f"Bearer {bad()}"}).status == 401


def test_two_different_tokens_are_401(ps: PolicySet) -> None:
    both = f"Bearer {token()},Bearer {token(sub='bob')}"
    assert check(ps, {"authorization": both}).status == 401
    assert check(ps, {"authorization": f"Bearer {token()}"}, b"/?access_token=x").status == 401


def test_default_query_parameter_location(ps: PolicySet) -> None:
    d = check(ps, {}, f"/p?a=1&access_token={token()}&b=2".encode())
    assert d.status == 200
    assert d.query == "a=1&b=2"
    assert check(ps, {}, b"/p?access_token=bad").status == 401


def test_custom_locations_forward_and_claim_headers() -> None:
    ps = PolicySet(
        jwt=request_authentications_to_jwt(
            [
                reqauth(
                    fromHeaders=[{"name": "x-jwt", "prefix": "Token "}],
                    forwardOriginalToken=True,
                    outputClaimToHeaders=[{"header": "x-sub", "claim": "sub"}],
                )
            ]
        )
    )
    d = check(ps, {"x-jwt": f"Token {token()}", "x-sub": "forged"})
    assert d.status == 200
    assert "x-jwt" not in d.remove_headers
    assert "x-sub" in d.remove_headers
    assert d.add_headers == (("x-sub", "alice"),)
    # Authorization is not a location of this provider: ignored.
    assert check(ps, {"authorization": "Bearer junk"}).status == 200
    # Without a token the client's own x-sub is still removed.
    assert "x-sub" in check(ps, {"x-sub": "forged"}).remove_headers


def test_output_payload_to_header_carries_the_verified_payload() -> None:
    """Envoy's forward_payload_header: the token's payload segment (base64url,
    no padding), after the xDS round trip; a forged copy is always removed."""
    jwt_config = request_authentications_to_jwt([reqauth(outputPayloadToHeader="X-Payload")])
    wire = config_pb2.JwtAuthentication()
    wire.CopyFrom(jwt_authentication_to_proto(jwt_config))
    assert wire.providers[ISSUER].forward_payload_header == "X-Payload"
    ps = PolicySet(jwt=jwt_authentication_from_proto(as_wire(wire)))
    signed = token(role="admin")
    d = check(ps, {"authorization": f"Bearer {signed}", "x-payload": "forged"})
    assert d.status == 200
    assert "x-payload" in d.remove_headers
    ((name, value),) = d.add_headers
    assert name == "x-payload" and "=" not in value
    decoded = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    assert (decoded["sub"], decoded["role"]) == ("alice", "admin")
    no_token = check(ps, {"x-payload": "forged"})
    assert "x-payload" in no_token.remove_headers and no_token.add_headers == ()


def test_no_audiences_configured_accepts_any_audience() -> None:
    ps = PolicySet(jwt=request_authentications_to_jwt([reqauth(audiences=[])]))
    assert check(ps, {"authorization": f"Bearer {token(aud='whatever')}"}).status == 200


def test_two_issuers_each_verified_with_their_keys() -> None:
    other = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(OTHER_KEY.public_key()))
    other["kid"] = "o1"
    second = reqauth(issuer="https://two.example", jwks=json.dumps({"keys": [other]}))
    ps = PolicySet(jwt=request_authentications_to_jwt([reqauth(), second]))
    good_two = token(OTHER_KEY, kid="o1", iss="https://two.example")
    assert check(ps, {"authorization": f"Bearer {good_two}"}).status == 200
    forged = token(RSA_KEY, kid="rsa1", iss="https://two.example")
    assert check(ps, {"authorization": f"Bearer {forged}"}).status == 401


def _over_xds(jwt_config: Any) -> PolicySet:
    """Through the control plane's protobuf and the library's decoder, with an
    ALLOW policy that only an authenticated request principal passes."""
    wire = jwt_authentication_to_proto(jwt_config).SerializeToString()
    decoded = jwt_authentication_from_proto(as_wire(config_pb2.JwtAuthentication.FromString(wire)))
    rule = {"from": [{"source": {"requestPrincipals": ["*"]}}]}
    allow = {"metadata": {"name": "authn", "namespace": "foo"}, "spec": {"rules": [rule]}}
    return PolicySet(authorization_policies_to_rbac([allow]), decoded)


def test_from_cookies_reads_the_token_from_the_named_cookie() -> None:
    # Istio's RequestAuthentication fromCookies: only that cookie, not the defaults.
    ps = _over_xds(request_authentications_to_jwt([reqauth(fromCookies=["session"])]))
    good = check(ps, {"cookie": f"theme=dark; session={token()}"})
    assert good.status == 200  # authenticated: the ALLOW policy needs a request principal
    assert "cookie" not in good.remove_headers  # Envoy leaves the cookie in place
    assert check(ps, {"cookie": f"session={token(OTHER_KEY)}"}).status == 401
    # With fromCookies alone, the Authorization header is not read (no defaults): 403.
    assert check(ps, {"authorization": f"Bearer {token()}"}).status == 403


def _claims_policy(key: str, value: str) -> dict[str, Any]:
    rule = {"when": [{"key": f"request.auth.claims[{key}]", "values": [value]}]}
    return {"metadata": {"name": "claims", "namespace": "foo"}, "spec": {"rules": [rule]}}


@pytest.mark.parametrize(
    ("extra", "claim", "value", "wanted", "status"),
    [
        ([], "scope", "read write", "write", 200),  # istiod's default: scope and permission
        ([], "permission", "a b", "a", 200),
        ([], "roles", "admin ops", "ops", 403),  # not listed: the whole string
        ([], "roles", "admin ops", "admin ops", 200),
        (["roles"], "roles", "admin ops", "ops", 200),  # spaceDelimitedClaims adds it
        (["roles"], "roles", "admin ops", "admin ops", 403),
        (["roles"], "roles", ["admin ops"], "admin ops", 200),  # a list is left as it is
    ],
)
def test_space_delimited_claims_split_on_spaces_for_rbac(
    extra: list[str], claim: str, value: Any, wanted: str, status: int
) -> None:
    """Envoy's normalize_payload_in_metadata as istiod configures it (scope and
    permission by default, plus spaceDelimitedClaims), across the xDS round trip."""
    config = request_authentications_to_jwt([reqauth(spaceDelimitedClaims=extra)])
    wire = config_pb2.JwtAuthentication.FromString(
        jwt_authentication_to_proto(config).SerializeToString()
    )
    assert list(wire.providers[ISSUER].normalize_payload_in_metadata.space_delimited_claims) == [
        "scope",
        "permission",
        *extra,
    ]
    rbac = authorization_policies_to_rbac([_claims_policy(claim, wanted)])
    ps = PolicySet(rbac, jwt_authentication_from_proto(as_wire(wire)))
    d = check(ps, {"authorization": f"Bearer {token(**{claim: value})}"})
    assert d.status == status


def _no_issuer(**rule: Any) -> dict[str, Any]:
    """A JWTRule without `issuer` (Istio accepts one when keys are given)."""
    ra = reqauth(**rule)
    del ra["spec"]["jwtRules"][0]["issuer"]
    return ra


def test_rule_without_issuer_accepts_any_iss_its_keys_verify() -> None:
    """Istio's JWTRule without issuer: any `iss` (or none) is accepted, but the
    signature, expiry and audiences are still checked; the principal is the
    token's own `iss/sub`. Also across the xDS round trip (Envoy's empty issuer)."""
    config = request_authentications_to_jwt([_no_issuer()])
    ((name, provider),) = jwt_authentication_to_proto(config).providers.items()
    assert provider.issuer == "" and name == "RequestAuthentication foo/jwt.spec.jwtRules[0]"
    ps = _over_xds(config)
    for iss in ("https://anyone.example", "https://other.example"):
        # the ALLOW policy needs a request principal
        assert check(ps, {"authorization": f"Bearer {token(iss=iss)}"}).status == 200
    rule = {"from": [{"source": {"requestPrincipals": ["https://anyone.example/alice"]}}]}
    only = {"metadata": {"name": "only", "namespace": "foo"}, "spec": {"rules": [rule]}}
    exact = PolicySet(authorization_policies_to_rbac([only]), config)
    assert check(exact, {"authorization": f"Bearer {token(iss='https://anyone.example')}"}).allowed
    assert check(exact, {"authorization": f"Bearer {token(iss='https://x.example')}"}).status == 403
    # Verified without `iss`, but then it has no request principal (as Istio).
    body = {"sub": "alice", "aud": "api", "exp": int(time.time()) + 60}
    no_iss = jwt.encode(body, RSA_KEY, algorithm="RS256", headers={"kid": "rsa1"})
    assert check(ps, {"authorization": f"Bearer {no_iss}"}).status == 403
    assert check(ps, {"authorization": f"Bearer {token(OTHER_KEY, iss='x')}"}).status == 401
    assert check(ps, {"authorization": f"Bearer {token(iss='x', aud='other')}"}).status == 401
    expired = token(iss="x", exp=int(time.time()) - 3600)
    assert check(ps, {"authorization": f"Bearer {expired}"}).status == 401
    assert check(ps, {}).status == 403  # no token: no principal


def test_rule_naming_the_issuer_is_tried_before_a_rule_without_one() -> None:
    """Envoy's requires_any: any provider that reads the location and whose
    issuer is the token's (or unset) may accept it; the one naming the issuer
    is tried first, so its claim headers apply; a token only the issuer-less
    rule's keys verify is still accepted, whatever its `iss`."""
    other = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(OTHER_KEY.public_key()))
    other["kid"] = "rsa1"  # same kid as the named rule's key: only the signature differs
    any_iss = _no_issuer(
        jwks=json.dumps({"keys": [other]}),
        outputClaimToHeaders=[{"header": "x-by", "claim": "sub"}],
    )
    named = reqauth(outputClaimToHeaders=[{"header": "x-named", "claim": "sub"}])
    ps = PolicySet(jwt=request_authentications_to_jwt([any_iss, named]))
    d = check(ps, {"authorization": f"Bearer {token()}"})
    assert (d.status, d.add_headers) == (200, (("x-named", "alice"),))
    # iss names the first rule's issuer, but only the issuer-less rule's keys verify it.
    d = check(ps, {"authorization": f"Bearer {token(OTHER_KEY)}"})
    assert (d.status, d.add_headers) == (200, (("x-by", "alice"),))
    third = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert check(ps, {"authorization": f"Bearer {token(third)}"}).status == 401
