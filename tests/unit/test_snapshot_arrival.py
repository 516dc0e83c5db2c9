"""An authority the control plane said is not a mesh service, which then
appears: until its routes, clusters and endpoints have all arrived it stays
"not a mesh service" (passed through), never "unknown" (a request to it would
then fail with ServiceResolutionError, as the Consul end-to-end test saw)."""

from __future__ import annotations

from types import MappingProxyType

from proxyless_mesh.model import Listener, RouteConfiguration
from proxyless_mesh.snapshot import build_snapshot
from proxyless_mesh.xds_client import XdsState

NAME = "web.service.consul:80"


def test_an_absent_authority_stays_absent_until_its_listener_is_whole() -> None:
    absent = build_snapshot(XdsState(absent_listeners=frozenset({NAME})))
    assert NAME in absent.absent

    # The listener arrived; its route configuration has not.
    arriving = XdsState(listeners=MappingProxyType({NAME: Listener(NAME, rds_name="web")}))
    assert not arriving.is_resolved(NAME)
    during = build_snapshot(arriving, absent)
    assert during.knows(NAME) and NAME in during.absent and NAME not in during.routes

    # Without that history the same state is simply not known yet.
    assert not build_snapshot(arriving).knows(NAME)

    # Whole (inline routes naming no cluster): a mesh service now, not absent.
    whole = XdsState(
        listeners=MappingProxyType(
            {NAME: Listener(NAME, inline_routes=RouteConfiguration("web", ()))}
        )
    )
    after = build_snapshot(whole, during)
    assert NAME in after.routes and NAME not in after.absent


def test_an_absent_authority_that_is_gone_from_the_state_is_forgotten() -> None:
    absent = build_snapshot(XdsState(absent_listeners=frozenset({NAME})))
    assert not build_snapshot(XdsState(), absent).knows(NAME)  # unsubscribed
