"""security.istio.io kinds and DestinationRule tls: what an operator writes
arrives in the model, and what the mesh cannot enforce is refused by name."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from mesh_control_plane.config import (
    ClientTls,
    ConfigLoadError,
    MeshConfig,
    MeshSettings,
    parse_documents,
)

SERVICE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  resolution: STATIC
  location: MESH_INTERNAL
  hosts: [reviews.mesh]
  ports: [{number: 8080, name: http}]
  endpoints: [{address: 10.0.0.1, serviceAccount: reviews, labels: {version: v1}}]
"""
JWKS = '{"keys": []}'


def load(*texts: str, settings: MeshSettings | None = None) -> MeshConfig:
    docs = []
    for i, text in enumerate(texts):
        for doc in yaml.safe_load_all(textwrap.dedent(text)):
            docs.append((f"f{i}.yaml", doc))
    return parse_documents(docs, settings)


def problems(*texts: str) -> list[str]:
    with pytest.raises(ConfigLoadError) as caught:
        load(*texts)
    return [f"{p.resource}: {p.field}: {p.message}" for p in caught.value.problems]


def security(kind: str, name: str, spec: str, namespace: str = "shop") -> str:
    return (
        f"apiVersion: security.istio.io/v1\nkind: {kind}\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n"
        + textwrap.indent(textwrap.dedent(spec), "  ")
    )


def test_peer_authentication_reaches_the_model() -> None:
    config = load(
        security("PeerAuthentication", "default", "mtls: {mode: STRICT}\n", "istio-system"),
        security(
            "PeerAuthentication",
            "reviews",
            "selector: {matchLabels: {app: reviews}}\nmtls: {mode: PERMISSIVE}\n"
            "portLevelMtls: {8080: {mode: DISABLE}, '9090': {mode: UNSET}}\n",
        ),
    )
    mesh, workload = sorted(config.peer_authentications, key=lambda p: p.meta.name)
    assert (mesh.selector, mesh.mode, dict(mesh.port_modes)) == (None, "STRICT", {})
    assert workload.selector == {"app": "reviews"}
    assert (workload.mode, dict(workload.port_modes)) == (
        "PERMISSIVE",
        {8080: "DISABLE", 9090: "UNSET"},
    )
    assert config.settings == MeshSettings()


def test_peer_authentication_mistakes() -> None:
    pa = "PeerAuthentication shop/pa"
    assert problems(
        security("PeerAuthentication", "pa", "mtls: {mode: OPTIONAL}\nportLevelMtls: {0: {}}\n")
    ) == [
        f'{pa}: spec.mtls.mode: unknown value "OPTIONAL" (expected one of STRICT, '
        "PERMISSIVE, DISABLE, UNSET)",
        f"{pa}: spec.portLevelMtls.0: must be between 1 and 65535, got 0",
        f"{pa}: spec.portLevelMtls: requires spec.selector (as in Istio)",
    ]
    two = problems(
        security("PeerAuthentication", "a", "mtls: {mode: STRICT}\n"),
        security("PeerAuthentication", "b", "mtls: {mode: DISABLE}\n"),
    )
    assert len(two) == 1 and two[0].startswith("PeerAuthentication shop/b: spec: namespace 'shop'")


def test_authorization_policy_is_checked_by_the_library_translator() -> None:
    spec = "action: DENY\nrules: [{to: [{operation: {paths: [/admin*]}}]}]\n"
    (policy,) = load(security("AuthorizationPolicy", "deny", spec)).authorization_policies
    assert policy.resource()["metadata"] == {"name": "deny", "namespace": "shop"}
    assert policy.spec["action"] == "DENY"
    ap = "AuthorizationPolicy shop/bad"
    assert problems(
        security("AuthorizationPolicy", "bad", "rules: [{from: [{source: {bogus: [x]}}]}]\n")
    ) == [f"{ap}: spec.rules[0].from[0].source.bogus: is not a supported field"]
    assert problems(security("AuthorizationPolicy", "bad", "action: CUSTOM\n")) == [
        f"{ap}: spec.provider.name: is required for action CUSTOM"
    ]
    assert problems(security("AuthorizationPolicy", "bad", "selector: {labels: {a: b}}\n")) == [
        f"{ap}: spec.selector.labels: unknown field"
    ]


def test_request_authentication_jwks() -> None:
    good = f"jwtRules: [{{issuer: iss, jwks: '{JWKS}', fromHeaders: [{{name: x-jwt}}]}}]\n"
    (ra,) = load(security("RequestAuthentication", "jwt", good)).request_authentications
    assert ra.spec["jwtRules"][0]["issuer"] == "iss"
    ra_ref = "RequestAuthentication shop/jwt"
    # jwksUri is fetched by the running control plane (tests: test_jwks_fetch.py).
    assert problems(
        security(
            "RequestAuthentication",
            "jwt",
            "jwtRules: [{issuer: iss, jwks: 'nope', fromHeaders: [{prefix: x}]}]\n",
        )
    ) == [
        f"{ra_ref}: spec.jwtRules[0].jwks: is not valid JSON: Expecting value: line 1 column 1 "
        "(char 0)",
        f"{ra_ref}: spec.jwtRules[0].fromHeaders[0].name: missing required field",
    ]


def test_request_authentication_issuer_is_optional_when_keys_are_given() -> None:
    """As Istio (istio/istio#56158): a JWTRule may omit `issuer` (or leave it
    empty) when it has jwks or jwksUri; one with neither is refused by field."""
    for rule in (
        f"{{jwks: '{JWKS}'}}",
        f"{{issuer: '', jwks: '{JWKS}'}}",
        "{jwksUri: 'https://keys.example/jwks.json', audiences: [api]}",
    ):
        spec = f"jwtRules: [{rule}]\n"
        (ra,) = load(security("RequestAuthentication", "jwt", spec)).request_authentications
        assert not ra.spec["jwtRules"][0].get("issuer")
    ra_ref = "RequestAuthentication shop/jwt"
    for rule in ("{audiences: [api]}", "{issuer: iss}", "{issuer: ''}"):
        assert problems(security("RequestAuthentication", "jwt", f"jwtRules: [{rule}]\n")) == [
            f"{ra_ref}: spec.jwtRules[0].jwks: missing required field"
        ]
    assert problems(security("RequestAuthentication", "jwt", "jwtRules: [{issuer: 7}]\n"))[
        0
    ].startswith(f"{ra_ref}: spec.jwtRules[0].issuer: ")


def test_destination_rule_tls_modes() -> None:
    rule = """
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews, namespace: shop}
    spec:
      host: reviews.mesh
      trafficPolicy:
        tls: {mode: ISTIO_MUTUAL, sni: reviews.internal}
        portLevelSettings: [{port: {number: 8080}, tls: {mode: DISABLE}}]
      subsets: [{name: v1, labels: {version: v1}, trafficPolicy: {tls: {}}}]
    """
    (dr,) = load(SERVICE, rule).destination_rules
    assert dr.traffic_policy is not None
    assert dr.traffic_policy.tls == ClientTls("ISTIO_MUTUAL", "reviews.internal")
    assert dr.traffic_policy.port_level_settings[0].tls == ClientTls("DISABLE")
    subset_policy = dr.subsets[0].traffic_policy
    assert subset_policy is not None and subset_policy.tls == ClientTls("DISABLE")


def test_security_kinds_need_the_security_api_group() -> None:
    text = security("PeerAuthentication", "pa", "mtls: {mode: STRICT}\n").replace(
        "security.istio.io/v1", "networking.istio.io/v1"
    )
    (problem,) = problems(text)
    assert "expected security.istio.io/v1, security.istio.io/v1beta1" in problem


def test_settings_are_carried() -> None:
    settings = MeshSettings(trust_domain="example.org", root_namespace="mesh-root")
    assert load(SERVICE, settings=settings).settings == settings
