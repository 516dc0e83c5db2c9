"""AuthorizationPolicy / RequestAuthentication `targetRef(s)` naming a Service:
the policy applies to the workloads of that Service (and to no other), other
kinds are refused by field."""

from __future__ import annotations

import pytest
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import LISTENER, ClientKind, NodeInfo, translate

from proxyless_mesh.model import InboundListener, RbacAction
from proxyless_mesh.xds_client import decode_listener

from .test_config_security import load, problems, security

SERVICES = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 10.0.0.1, serviceAccount: reviews, labels: {app: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 10.0.0.2, serviceAccount: ratings, labels: {app: ratings}}]
"""
DENY_REVIEWS = security(
    "AuthorizationPolicy",
    "deny-admin",
    """
    targetRefs: [{kind: Service, group: "", name: reviews}]
    action: DENY
    rules: [{to: [{operation: {paths: [/admin]}}]}]
    """,
)
JWT_REVIEWS = security(
    "RequestAuthentication",
    "jwt",
    """
    targetRef: {kind: Service, name: reviews}
    jwtRules: [{issuer: https://issuer.example, jwks: '{"keys": []}'}]
    """,
)


def _listener(config: object, account: str, ip: str) -> InboundListener:
    node = NodeInfo(id=account, kind=ClientKind.MESH, namespace="shop", service_account=account)
    rs = translate(config, build_static_registry(config), node)  # type: ignore[arg-type]
    name = f"grpc/server?xds.resource.listening_address={ip}:9080"
    decoded = decode_listener(rs.resources[LISTENER][name])
    assert isinstance(decoded, InboundListener)
    return decoded


def test_target_ref_service_selects_that_services_workloads_only() -> None:
    config = load(SERVICES, DENY_REVIEWS, JWT_REVIEWS)
    reviews = _listener(config, "reviews", "10.0.0.1")
    assert [e.action for e in reviews.rbac] == [RbacAction.DENY]
    assert [n for n, _ in reviews.rbac[0].policies] == ["ns[shop]-policy[deny-admin]-rule[0]"]
    assert reviews.jwt is not None and len(reviews.jwt.providers) == 1
    ratings = _listener(config, "ratings", "10.0.0.2")
    assert ratings.rbac == () and ratings.jwt is None


def test_target_ref_in_another_namespace_selects_nothing() -> None:
    other = DENY_REVIEWS.replace("namespace: shop", "namespace: other")
    reviews = _listener(load(SERVICES, other), "reviews", "10.0.0.1")
    assert reviews.rbac == ()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]",
            "spec.targetRefs[0].kind: gateway.networking.k8s.io/Gateway is not supported",
        ),
        (
            "targetRefs: [{kind: Service, name: reviews}]\nselector: {matchLabels: {app: x}}",
            "spec.targetRefs: cannot be set together with selector",
        ),
        (
            "targetRef: {kind: Service, name: reviews, namespace: other}",
            "spec.targetRef.namespace: must be the policy's own namespace",
        ),
        ("targetRefs: [{kind: Service}]", "spec.targetRefs[0].name: is required"),
    ],
)
def test_unsupported_targets_are_refused_by_field(spec: str, expected: str) -> None:
    found = problems(security("AuthorizationPolicy", "p", spec))
    assert any(expected in p for p in found), found
