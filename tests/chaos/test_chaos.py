"""The short chaos run for `make test`: every scenario at 100 req/s with
one-second phases; zero failed requests wherever a retry or a healthy
endpoint exists (all of these scenarios but one: a VirtualService written
before the DestinationRule defining its subset fails requests with 503 NC
until the rule follows, as Istio does; there only NoClusterError is allowed).
The long run: tests/chaos/run.py."""

from __future__ import annotations

import pytest
from harness import Result
from meshlab import LocalMesh
from scenarios import SCENARIOS

pytestmark = pytest.mark.chaos

RATE, HOLD = 100.0, 1.0


DELTA_SCENARIOS = [
    "scale",
    "subset_rule_first",
    "subset_route_first",
    "control_plane_restart",
    "control_plane_replica_swap",
]
"""Those where the client follows config changes or a new control plane,
run again with the library on Delta ADS (the data-path faults do not
depend on the ADS variant)."""


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_request_fails_under_the_fault(lab: LocalMesh, name: str) -> None:
    check_scenario(lab, name)


@pytest.mark.parametrize("name", DELTA_SCENARIOS)
def test_no_request_fails_over_delta_ads(lab: LocalMesh, name: str) -> None:
    lab.ads = "delta"
    check_scenario(lab, name)


def check_scenario(lab: LocalMesh, name: str) -> None:
    results: list[Result] = []
    SCENARIOS[name](lab, RATE, HOLD, results)
    (result,) = results
    assert result.sent > RATE, result  # the load really ran
    if result.unavoidable:
        assert set(result.errors) <= {"NoClusterError"}, (result.row(), result.errors)
    else:
        assert result.failed == 0, (result.row(), result.errors)
