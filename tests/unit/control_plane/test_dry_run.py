"""Dry-run AuthorizationPolicies (`istio.io/dry-run: "true"`): evaluated,
recorded as Envoy's shadow result, never deciding; through the same
translation -> protobuf -> decode path the library receives over xDS."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from mesh_control_plane.config.authorization import authorization_policies_to_rbac
from mesh_control_plane.translate.rbac_protos import rbac_filters_to_proto
from wire_support import as_wire

from proxyless_mesh.model import RbacAction
from proxyless_mesh.policy import InboundRequest, PolicySet, ShadowResult
from proxyless_mesh.xds_client._decode_rbac import rbac_filter_from_proto

ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
OTHER = "spiffe://cluster.local/ns/web/sa/frontend"


def _policy(name: str, action: str, principal: str, *, dry_run: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "bookinfo"}
    if dry_run:
        meta["annotations"] = {"istio.io/dry-run": "true"}
    rule = {"from": [{"source": {"principals": [principal.removeprefix("spiffe://")]}}]}
    return {
        "kind": "AuthorizationPolicy",
        "metadata": meta,
        "spec": {"action": action, "rules": [rule]},
    }


def _over_the_wire(policies: list[dict[str, Any]]) -> PolicySet:
    """What the library enforces: translated, serialized, parsed, decoded."""
    engines = []
    for _action, msg in rbac_filters_to_proto(authorization_policies_to_rbac(policies)):
        parsed = http_rbac_pb2.RBAC.FromString(msg.SerializeToString())
        engines.extend(rbac_filter_from_proto(as_wire(parsed)))
    return PolicySet(engines)


def _get(principal: str) -> InboundRequest:
    return InboundRequest("GET", b"/ratings", {"host": "ratings"}, principal, "10.0.0.9", 9080)


def test_dry_run_allow_alone_denies_nothing_and_records_what_it_would_do() -> None:
    policies = _over_the_wire([_policy("admins-only", "ALLOW", ADMIN)])
    matched = policies.check(_get(ADMIN))
    unmatched = policies.check(_get(OTHER))
    assert matched.status == 200 and unmatched.status == 200
    rule = "ns[bookinfo]-policy[admins-only]-rule[0]"
    assert matched.shadow == (ShadowResult("istio_dry_run_allow_", "allowed", rule),)
    assert unmatched.shadow == (ShadowResult("istio_dry_run_allow_", "denied", ""),)
    assert unmatched.shadow[0].metadata() == {"istio_dry_run_allow_shadow_engine_result": "denied"}


def test_dry_run_deny_does_not_deny_but_says_it_would() -> None:
    policies = _over_the_wire([_policy("block-web", "DENY", OTHER)])
    decision = policies.check(_get(OTHER))
    assert decision.status == 200
    assert decision.shadow[0].metadata() == {
        "istio_dry_run_deny_shadow_engine_result": "denied",
        "istio_dry_run_deny_shadow_effective_policy_id": "ns[bookinfo]-policy[block-web]-rule[0]",
    }


def test_enforced_and_dry_run_share_one_filter_as_istio_lays_them_out() -> None:
    raw = [
        _policy("admins-only", "ALLOW", ADMIN, dry_run=False),
        _policy("would-allow-web", "ALLOW", OTHER),
    ]
    filters = rbac_filters_to_proto(authorization_policies_to_rbac(raw))
    assert len(filters) == 1
    action, msg = filters[0]
    assert action is RbacAction.ALLOW
    assert list(msg.rules.policies) == ["ns[bookinfo]-policy[admins-only]-rule[0]"]
    assert list(msg.shadow_rules.policies) == ["ns[bookinfo]-policy[would-allow-web]-rule[0]"]
    assert msg.shadow_rules_stat_prefix == "istio_dry_run_allow_"
    policies = _over_the_wire(raw)
    denied = policies.check(_get(OTHER))
    assert denied.status == 403  # the enforced ALLOW still decides
    assert denied.shadow[0].engine_result == "allowed"  # ... and the dry-run one is recorded


def test_no_dry_run_policy_means_no_shadow_result() -> None:
    decision = _over_the_wire([_policy("p", "ALLOW", ADMIN, dry_run=False)]).check(_get(ADMIN))
    assert decision.status == 200 and decision.shadow == ()


def test_shadow_result_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="proxyless_mesh.policy"):
        _over_the_wire([_policy("block-web", "DENY", OTHER)]).check(_get(OTHER))
    lines = [r.getMessage() for r in caplog.records if '"decision":"dry_run"' in r.getMessage()]
    assert len(lines) == 1
    assert "istio_dry_run_deny_shadow_engine_result=denied" in lines[0]
    assert "policy[block-web]" in lines[0]
