"""Hypothesis strategy for one workload's security and scope configuration:
AuthorizationPolicies (CUSTOM with an HTTP or gRPC ext_authz provider from
the mesh config, ALLOW, DENY), a RequestAuthentication with
spaceDelimitedClaims, and a Sidecar with an outboundTrafficPolicy. What it
gives translates to the filters the library's inbound decoder reads
(ext_authz, RBAC, jwt_authn) and to the `virtualOutbound` listener."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import strategies as st

NAMESPACE = "foo"
LABELS = {"app": "httpbin"}
SERVICE_ACCOUNT = "httpbin"
_paths = st.sampled_from(["/headers", "/admin", "/api/*", "*/status"])
_claims = st.lists(st.sampled_from(["scope", "roles", "perms"]), max_size=2, unique=True)
_headers = st.lists(st.sampled_from(["x-ext-authz", "x-user", "cookie"]), max_size=2, unique=True)


def _doc(api: str, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, "namespace": NAMESPACE}
    return {"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec}


@st.composite
def _provider(draw: st.DrawFn) -> dict[str, Any]:
    """A mesh config extensionProvider (its host is the workload's own service)."""
    spec: dict[str, Any] = {"service": f"httpbin.{NAMESPACE}.svc.cluster.local", "port": 8000}
    if draw(st.booleans()):
        spec["failOpen"] = True
    if draw(st.booleans()):
        spec["timeout"] = draw(st.sampled_from(["0.5s", "2s", "100ms"]))
    if draw(st.booleans()):
        spec["statusOnError"] = draw(st.sampled_from(["403", "503"]))
    if draw(st.booleans()):
        return {"name": "authz", "envoyExtAuthzGrpc": spec}
    if draw(st.booleans()):
        spec["pathPrefix"] = "/check"
    for key in ("includeRequestHeadersInCheck", "headersToUpstreamOnAllow"):
        names = draw(_headers)
        if names:
            spec[key] = names
    return {"name": "authz", "envoyExtAuthzHttp": spec}


@st.composite
def policy_documents(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Documents for the workload `httpbin` in namespace foo (LABELS,
    SERVICE_ACCOUNT): its ServiceEntry and some of the policies above."""
    endpoint = {"address": "10.0.0.1", "serviceAccount": SERVICE_ACCOUNT, "labels": LABELS}
    docs = [
        _doc(
            "networking.istio.io/v1",
            "ServiceEntry",
            "httpbin",
            {
                "hosts": [f"httpbin.{NAMESPACE}.svc.cluster.local"],
                "location": "MESH_INTERNAL",
                "resolution": "STATIC",
                "ports": [{"number": 8000, "name": "http"}],
                "endpoints": [endpoint],
            },
        )
    ]
    selector = {"matchLabels": LABELS}
    if draw(st.booleans()):
        mesh = yaml.safe_dump({"extensionProviders": [draw(_provider())]})
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "istio", "namespace": "istio-system"},
                "data": {"mesh": mesh},
            }
        )
        rules = [{"to": [{"operation": {"paths": draw(st.lists(_paths, min_size=1))}}]}]
        spec = {"selector": selector, "action": "CUSTOM", "provider": {"name": "authz"}}
        docs.append(
            _doc("security.istio.io/v1", "AuthorizationPolicy", "ext", {**spec, "rules": rules})
        )
    for action in draw(st.lists(st.sampled_from(["ALLOW", "DENY"]), max_size=2, unique=True)):
        rules = [{"to": [{"operation": {"paths": [draw(_paths)]}}]}]
        spec = {"selector": selector, "action": action, "rules": rules}
        docs.append(_doc("security.istio.io/v1", "AuthorizationPolicy", action.lower(), spec))
    if draw(st.booleans()):
        rule: dict[str, Any] = {"issuer": "iss", "jwks": '{"keys": []}'}
        claims = draw(_claims)
        if claims:
            rule["spaceDelimitedClaims"] = claims
        spec = {"selector": selector, "jwtRules": [rule]}
        docs.append(_doc("security.istio.io/v1", "RequestAuthentication", "jwt", spec))
    if draw(st.booleans()):
        mode = draw(st.sampled_from(["ALLOW_ANY", "REGISTRY_ONLY"]))
        spec = {"egress": [{"hosts": ["./*"]}], "outboundTrafficPolicy": {"mode": mode}}
        if draw(st.booleans()):
            spec["workloadSelector"] = {"labels": LABELS}
        docs.append(_doc("networking.istio.io/v1", "Sidecar", "scope", spec))
    return docs
