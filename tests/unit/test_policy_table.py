"""Istio's documented AuthorizationPolicy examples against a request matrix.

Policies are written as Istio YAML (from istio.io's authorization docs and the
AuthorizationPolicy reference); each case is (identity, method, host, path,
headers, JWT) -> expected HTTP status from our engine.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from mesh_control_plane.config.authorization import (
    authorization_policies_to_rbac,
    request_authentications_to_jwt,
)

from proxyless_mesh.policy import (
    InboundRequest,
    PolicyConfigError,
    PolicySet,
    UnsupportedPolicyError,
)

ISSUER = "testing@secure.istio.io"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_JWK = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
JWKS = json.dumps({"keys": [_JWK]})
SLEEP = "spiffe://cluster.local/ns/foo/sa/sleep"
BAR = "spiffe://cluster.local/ns/bar/sa/client"
ADMIN = "spiffe://cluster.local/ns/admin/sa/ops"


def jwt_for(sub: str, **claims: Any) -> str:
    body = {"iss": ISSUER, "sub": sub, "exp": int(time.time()) + 86400, **claims}
    return jwt.encode(body, KEY, algorithm="RS256")


def policy_set(text: str) -> PolicySet:
    docs = [d for d in yaml.safe_load_all(text) if d]
    authz = [d for d in docs if d["kind"] == "AuthorizationPolicy"]
    authn = [d for d in docs if d["kind"] == "RequestAuthentication"]
    for d in authn:
        for rule in d["spec"]["jwtRules"]:
            rule["jwks"] = JWKS
    return PolicySet(authorization_policies_to_rbac(authz), request_authentications_to_jwt(authn))


def request(
    path: str = "/",
    method: str = "GET",
    peer: str | None = None,
    host: str = "httpbin.foo",
    headers: dict[str, str] | None = None,
    ip: str = "10.1.2.3",
    port: int = 8000,
    token: str | None = None,
) -> InboundRequest:
    h = {"host": host, **(headers or {})}
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    return InboundRequest(method, path.encode(), h, peer, ip, port)


ALLOW_NOTHING = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: foo}
spec: {}
"""
DENY_ALL = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: foo}
spec: {action: DENY, rules: [{}]}
"""
ALLOW_ALL = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec: {rules: [{}]}
"""
BY_NAMESPACE_AND_METHOD = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/foo/sa/sleep"]}
    - source: {namespaces: ["bar"]}
    to:
    - operation: {methods: ["GET"], paths: ["/info*"]}
    - operation: {methods: ["POST"], paths: ["/data"]}
    when:
    - key: request.auth.claims[iss]
      values: ["testing@secure.istio.io"]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  jwtRules: [{issuer: "testing@secure.istio.io"}]
"""
DENY_PATH_UNLESS_NS = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-method-get, namespace: foo}
spec:
  action: DENY
  rules:
  - from: [{source: {notNamespaces: ["admin"]}}]
    to: [{operation: {paths: ["/admin", "/admin/*"]}}]
  - to: [{operation: {methods: ["DELETE"], notPaths: ["/tmp/*"]}}]
"""
HEADER_WHEN = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: header-when, namespace: foo}
spec:
  rules:
  - to: [{operation: {methods: ["GET"]}}]
    when:
    - {key: "request.headers[X-Version]", values: ["v1", "v2*"]}
    - {key: "request.headers[user-agent]", notValues: ["curl*", "*bot"]}
"""
JWT_REQUIRED = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt-example, namespace: foo}
spec:
  jwtRules: [{issuer: "testing@secure.istio.io"}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: foo}
spec:
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]}}]
  - from: [{source: {requestPrincipals: ["*"]}}]
    when:
    - {key: "request.auth.claims[groups]", values: ["group1"]}
    - {key: "request.auth.claims[nested][role]", values: ["admin"]}
"""
IP_BLOCKS = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ingress-policy, namespace: foo}
spec:
  action: ALLOW
  rules:
  - from: [{source: {ipBlocks: ["1.2.3.4", "5.6.7.0/24"], notIpBlocks: ["5.6.7.9"]}}]
"""
HOSTS_PORTS = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: hosts-ports, namespace: foo}
spec:
  action: ALLOW
  rules:
  - to: [{operation: {hosts: ["Secret.com", "*.example.org"], ports: ["8000"]}}]
    when: [{key: destination.port, notValues: ["9999"]}]
"""
AUDIT_AND_DENY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: foo}
spec:
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/audited/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-bar, namespace: foo}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: ["bar"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-principals, namespace: foo}
spec:
  rules: [{from: [{source: {principals: ["*"]}}]}]
"""

TEMPLATES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: templates, namespace: foo}
spec:
  rules:
  - to: [{operation: {paths: ["/store/{*}/42", "/files/{**}"]}}]
"""
ACCOUNTS = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: accounts, namespace: foo}
spec:
  rules:
  - from: [{source: {serviceAccounts: ["foo/sleep"]}}]
"""

CASES: list[tuple[str, str, InboundRequest, int]] = [
    ("allow-nothing", ALLOW_NOTHING, request(peer=SLEEP), 403),
    ("allow-nothing", ALLOW_NOTHING, request(), 403),
    ("deny-all", DENY_ALL, request(peer=SLEEP, path="/x"), 403),
    ("allow-all", ALLOW_ALL, request(), 200),
    ("allow-all+deny-all", ALLOW_ALL + "---" + DENY_ALL, request(), 403),
    ("no policy", "", request(), 200),
    (
        "principal GET /info",
        BY_NAMESPACE_AND_METHOD,
        request("/info", peer=SLEEP, token=jwt_for("u")),
        200,
    ),
    (
        "principal GET /info/x",
        BY_NAMESPACE_AND_METHOD,
        request("/info/x", peer=SLEEP, token=jwt_for("u")),
        200,
    ),
    ("no jwt -> claim fails", BY_NAMESPACE_AND_METHOD, request("/info", peer=SLEEP), 403),
    (
        "namespace bar POST /data",
        BY_NAMESPACE_AND_METHOD,
        request("/data", "POST", BAR, token=jwt_for("u")),
        200,
    ),
    (
        "bar GET /data",
        BY_NAMESPACE_AND_METHOD,
        request("/data", "GET", BAR, token=jwt_for("u")),
        403,
    ),
    ("other ns", BY_NAMESPACE_AND_METHOD, request("/info", peer=ADMIN, token=jwt_for("u")), 403),
    ("plaintext", BY_NAMESPACE_AND_METHOD, request("/info", token=jwt_for("u")), 403),
    ("bad jwt", BY_NAMESPACE_AND_METHOD, request("/info", peer=SLEEP, token="x.y.z"), 401),
    ("deny /admin from foo", DENY_PATH_UNLESS_NS, request("/admin", peer=SLEEP), 403),
    ("deny /admin/x plaintext", DENY_PATH_UNLESS_NS, request("/admin/x"), 403),
    ("admin ns passes", DENY_PATH_UNLESS_NS, request("/admin/x", peer=ADMIN), 200),
    ("/administrator not covered", DENY_PATH_UNLESS_NS, request("/administrator", peer=SLEEP), 200),
    ("DELETE /data denied", DENY_PATH_UNLESS_NS, request("/data", "DELETE", ADMIN), 403),
    ("DELETE /tmp/x allowed", DENY_PATH_UNLESS_NS, request("/tmp/x", "DELETE", ADMIN), 200),
    ("header v1", HEADER_WHEN, request(headers={"x-version": "v1"}), 200),
    ("header v2-beta", HEADER_WHEN, request(headers={"x-version": "v2-beta"}), 200),
    ("header v3", HEADER_WHEN, request(headers={"x-version": "v3"}), 403),
    ("header absent", HEADER_WHEN, request(), 403),
    ("header dup joined", HEADER_WHEN, request(headers={"x-version": "v3,v1"}), 403),
    ("curl agent", HEADER_WHEN, request(headers={"x-version": "v1", "user-agent": "curl/8"}), 403),
    (
        "evil agent",
        HEADER_WHEN,
        request(headers={"x-version": "v1", "user-agent": "evil-bot"}),
        403,
    ),
    ("ok agent", HEADER_WHEN, request(headers={"x-version": "v1", "user-agent": "firefox"}), 200),
    ("POST not allowed", HEADER_WHEN, request(method="POST", headers={"x-version": "v1"}), 403),
    ("jwt principal", JWT_REQUIRED, request(token=jwt_for(ISSUER)), 200),
    ("jwt other sub", JWT_REQUIRED, request(token=jwt_for("bob")), 403),
    ("no jwt", JWT_REQUIRED, request(), 403),
    (
        "jwt groups list",
        JWT_REQUIRED,
        request(token=jwt_for("bob", groups=["g0", "group1"], nested={"role": "admin"})),
        200,
    ),
    (
        "jwt groups string",
        JWT_REQUIRED,
        request(token=jwt_for("bob", groups="group1", nested={"role": "admin"})),
        200,
    ),
    (
        "jwt nested wrong",
        JWT_REQUIRED,
        request(token=jwt_for("bob", groups="group1", nested={"role": "user"})),
        403,
    ),
    ("jwt invalid", JWT_REQUIRED, request(token=jwt_for(ISSUER)[:-3] + "abc"), 401),
    ("ip exact", IP_BLOCKS, request(ip="1.2.3.4"), 200),
    ("ip cidr", IP_BLOCKS, request(ip="5.6.7.8"), 200),
    ("ip notIpBlocks", IP_BLOCKS, request(ip="5.6.7.9"), 403),
    ("ip other", IP_BLOCKS, request(ip="9.9.9.9"), 403),
    ("ip v6", IP_BLOCKS, request(ip="::1"), 403),
    ("host case+port", HOSTS_PORTS, request(host="SECRET.COM:80"), 200),
    ("host trailing dot", HOSTS_PORTS, request(host="secret.com."), 200),
    ("host wildcard", HOSTS_PORTS, request(host="a.Example.org"), 200),
    ("host other", HOSTS_PORTS, request(host="example.org"), 403),
    ("port other", HOSTS_PORTS, request(host="secret.com", port=9000), 403),
    ("template one segment", TEMPLATES, request("/store/items/42"), 200),
    ("template not two segments", TEMPLATES, request("/store/items/42/x"), 403),
    ("template not empty segment", TEMPLATES, request("/store/items/"), 403),
    ("template rest", TEMPLATES, request("/files/a/b/c.txt"), 200),
    ("template rest empty", TEMPLATES, request("/files/"), 200),
    ("template elsewhere", TEMPLATES, request("/filesx/a"), 403),
    ("template percent-encoded", TEMPLATES, request("/store/a%20b/42"), 200),
    ("service account", ACCOUNTS, request(peer=SLEEP), 200),
    (
        "service account other trust domain",
        ACCOUNTS,
        request(peer="spiffe://td2/ns/foo/sa/sleep"),
        200,
    ),
    ("service account other", ACCOUNTS, request(peer=BAR), 403),
    ("service account none", ACCOUNTS, request(), 403),
    ("deny ns bar first", AUDIT_AND_DENY, request("/audited/x", peer=BAR), 403),
    ("any principal", AUDIT_AND_DENY, request("/audited/x", peer=SLEEP), 200),
    ("no principal", AUDIT_AND_DENY, request("/x"), 403),
]


@pytest.mark.parametrize(("name", "text", "req", "want"), CASES, ids=[c[0] for c in CASES])
def test_policy_table(name: str, text: str, req: InboundRequest, want: int) -> None:
    assert policy_set(text).check(req).status == want


def test_audit_and_deny_lines_are_json_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    ps = policy_set(AUDIT_AND_DENY)
    token = jwt_for("someone")
    caplog.set_level("INFO", logger="proxyless_mesh.policy")
    ps.check(request("/audited/x?secret=1", peer=SLEEP, token=token))
    ps.check(request("/y", peer=BAR, token=token))
    lines = [json.loads(r.getMessage()) for r in caplog.records]
    assert [(x["decision"], x["policy"]) for x in lines] == [
        ("audit", "ns[foo]-policy[audit]-rule[0]"),
        ("deny", "ns[foo]-policy[deny-bar]-rule[0]"),
    ]
    assert lines[1]["namespace"] == "bar" and lines[1]["principal"] == BAR
    assert lines[0]["path"] == "/audited/x"
    text = caplog.text
    assert token not in text and token.split(".")[1] not in text and "secret=1" not in text


@pytest.mark.parametrize(
    ("source", "field", "message"),
    [
        ({"serviceAccounts": ["a/b"], "namespaces": ["a"]}, "source.serviceAccounts", "together"),
        ({"serviceAccounts": ["b"]}, "serviceAccounts[0]", "<namespace>/<service account>"),
        ({"paths": ["/a/{*}.txt"]}, "paths[0]", "whole path segment"),
        ({"paths": ["/a/{**}/{*}"]}, "paths[0]", "must be the last operator"),
    ],
)
def test_service_account_and_template_mistakes(
    source: dict[str, Any], field: str, message: str
) -> None:
    block = {"to": [{"operation": source}]} if "paths" in source else {"from": [{"source": source}]}
    doc = {
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "foo"},
        "spec": {"rules": [block]},
    }
    with pytest.raises(PolicyConfigError) as err:
        authorization_policies_to_rbac([doc])
    assert field in err.value.field and message in str(err.value)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"action": "CUSTOM", "provider": {"name": "x", "port": 1}}, "spec.provider.port"),
        (
            {"rules": [{"when": [{"key": "request.regex.headers[x]", "values": ["a"]}]}]},
            "when[0].key",
        ),
        ({"rules": [{"to": [{"operation": {"pathz": ["/a"]}}]}]}, "operation.pathz"),
        ({"action": "MAYBE"}, "spec.action"),
    ],
)
def test_unsupported_fields_are_named(spec: dict[str, Any], field: str) -> None:
    doc = {
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "foo"},
        "spec": spec,
    }
    with pytest.raises(UnsupportedPolicyError) as err:
        authorization_policies_to_rbac([doc])
    assert field in err.value.field
