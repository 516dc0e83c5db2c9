"""The short chaos run for `make test`: every scenario at 100 req/s with
one-second phases; zero failed requests wherever a retry or a healthy
endpoint exists (all of these scenarios). The long run: tests/chaos/run.py."""

from __future__ import annotations

import pytest
from harness import Result
from meshlab import LocalMesh
from scenarios import SCENARIOS

pytestmark = pytest.mark.chaos

RATE, HOLD = 100.0, 1.0
PUSH_ORDER_RACE = (
    "control plane push order: when one config version both drops subset v2's cluster and "
    "moves the route off it, CDS (v2 gone) is pushed before RDS, and for a few ms the "
    "client's route names a cluster declared absent (NoHealthyUpstreamError); "
    "deterministic reproducer: tests/chaos/test_push_order.py (strict xfail)"
)
FLAKY = {
    # The DR alone (v1 only, while the VS still routes to v2) is refused as a dangling
    # reference, so the reverse step always lands in one version: hits the race on
    # every switch back, failing only when a request falls in the few-ms window.
    "subset_route_first": PUSH_ORDER_RACE,
    # VS then DR 50 ms apart: separate versions unless the watcher (100 ms poll, 50 ms
    # debounce) batches both writes into one, then the same race.
    "subset_rule_first": PUSH_ORDER_RACE + " (only when the watcher batches both writes)",
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=False, reason=FLAKY[n])) if n in FLAKY else n
        for n in SCENARIOS
    ],
)
def test_no_request_fails_under_the_fault(lab: LocalMesh, name: str) -> None:
    results: list[Result] = []
    SCENARIOS[name](lab, RATE, HOLD, results)
    (result,) = results
    assert result.sent > RATE, result  # the load really ran
    assert result.failed == 0, (result.row(), result.errors)
