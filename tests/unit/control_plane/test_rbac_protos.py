"""RBAC model <-> Envoy RBAC protobufs: round trips and refusals."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from mesh_control_plane.config.authorization import authorization_policies_to_rbac
from mesh_control_plane.translate.rbac_protos import (
    rbac_filter_to_any,
    rbac_filter_to_proto,
    rbac_to_proto,
)
from wire_support import as_wire

from proxyless_mesh.model import (
    Authenticated,
    CidrRange,
    DestinationIp,
    DestinationPortRange,
    DirectRemoteIp,
    Policy,
    Rbac,
    RbacAction,
    RequestedServerName,
)
from proxyless_mesh.model._resources import HeaderMatcher, MatchKind, StringMatcher
from proxyless_mesh.policy import (
    InboundRequest,
    PolicyConfigError,
    PolicySet,
    UnsupportedPolicyError,
)
from proxyless_mesh.xds_client._decode_rbac import rbac_filter_from_proto, rbac_from_proto

EVERYTHING = [
    {
        "metadata": {"name": "deny", "namespace": "foo"},
        "spec": {
            "action": "DENY",
            "rules": [
                {
                    "from": [{"source": {"notNamespaces": ["admin"], "ipBlocks": ["10.0.0.0/8"]}}],
                    "to": [{"operation": {"paths": ["/admin*", "*.php"], "notMethods": ["GET"]}}],
                }
            ],
        },
    },
    {
        "metadata": {"name": "allow", "namespace": "foo"},
        "spec": {
            "rules": [
                {
                    "from": [
                        {"source": {"principals": ["cluster.local/ns/a/sa/b", "*/sa/c", "x*"]}},
                        {"source": {"requestPrincipals": ["iss/*"], "remoteIpBlocks": ["::1"]}},
                    ],
                    "to": [{"operation": {"hosts": ["*.Example.com"], "ports": ["8080"]}}],
                    "when": [
                        {"key": "request.headers[x-a]", "values": ["*"]},
                        {"key": "request.auth.claims[groups]", "notValues": ["bad"]},
                        {"key": "request.auth.audiences", "values": ["api"]},
                        {"key": "destination.ip", "values": ["10.1.0.0/16"]},
                        {"key": "connection.sni", "values": ["*.svc"]},
                        {"key": "source.ip", "values": ["1.2.3.4"]},
                    ],
                },
                {},
            ]
        },
    },
    {
        "metadata": {"name": "audit", "namespace": "foo"},
        "spec": {"action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]},
    },
]


def test_istio_policies_round_trip_through_protobuf() -> None:
    engines = authorization_policies_to_rbac(EVERYTHING)
    assert [e.action for e in engines] == [RbacAction.LOG, RbacAction.DENY, RbacAction.ALLOW]
    for engine in engines:
        wire = rbac_filter_to_any(engine).SerializeToString()
        parsed = http_rbac_pb2.RBAC()
        packed = type(rbac_filter_to_any(engine))()
        packed.ParseFromString(wire)
        assert packed.Unpack(parsed)
        (back,) = rbac_filter_from_proto(as_wire(parsed))
        assert back.action == engine.action
        assert dict(back.policies) == dict(engine.policies)


def test_hand_built_leaves_round_trip() -> None:
    policy = Policy(
        permissions=(
            DestinationPortRange(8000, 9000),
            DestinationIp(CidrRange("10.0.0.0", 8)),
            RequestedServerName(StringMatcher(MatchKind.CONTAINS, "svc")),
            HeaderMatcher("x-h", StringMatcher(MatchKind.PRESENT), invert=True),
        ),
        principals=(Authenticated(None), DirectRemoteIp(CidrRange("::", 0))),
    )
    rbac = Rbac(RbacAction.ALLOW, (("p", policy),))
    assert rbac_from_proto(as_wire(rbac_to_proto(rbac))) == rbac


def test_decisions_are_unchanged_by_the_round_trip() -> None:
    engines = authorization_policies_to_rbac(EVERYTHING)
    back = [b for e in engines for b in rbac_filter_from_proto(as_wire(rbac_filter_to_proto(e)))]
    a = PolicySet(engines)
    b = PolicySet(back)
    reqs = [
        InboundRequest("POST", b"/admin/x", {"host": "h"}, None, "10.1.1.1", 8080),
        InboundRequest(
            "GET",
            b"/",
            {"host": "a.example.com", "x-a": "1"},
            "spiffe://cluster.local/ns/a/sa/b",
            "1.2.3.4",
            8080,
            "10.1.2.3",
            "x.svc",
        ),
        InboundRequest("GET", b"/", {"host": "a.example.com"}, None, "1.2.3.4", 8080),
    ]
    for r in reqs:
        assert a.check(r).status == b.check(r).status


def test_filter_without_rules_is_a_no_op() -> None:
    assert rbac_filter_from_proto(as_wire(http_rbac_pb2.RBAC())) == ()


def _policy_with(**fields: Any) -> rbac_pb2.RBAC:
    msg = rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW)
    msg.policies["p"].principals.add(any=True)
    msg.policies["p"].permissions.add(**fields)
    return msg


def test_unenforceable_protobufs_are_refused() -> None:
    cel = rbac_pb2.RBAC()
    cel.policies["p"].condition.const_expr.bool_value = True
    with pytest.raises(UnsupportedPolicyError, match="condition"):
        rbac_from_proto(as_wire(cel))
    msg = _policy_with()
    msg.policies["p"].permissions[0].header.range_match.start = 1
    with pytest.raises(UnsupportedPolicyError, match="range_match"):
        rbac_from_proto(as_wire(msg))


def test_wrong_side_leaf_is_refused() -> None:
    bad = Rbac(RbacAction.ALLOW, (("p", Policy((Authenticated(None),), (Authenticated(None),))),))
    with pytest.raises(PolicyConfigError):
        rbac_to_proto(bad)
