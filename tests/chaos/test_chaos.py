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


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_request_fails_under_the_fault(lab: LocalMesh, name: str) -> None:
    results: list[Result] = []
    SCENARIOS[name](lab, RATE, HOLD, results)
    (result,) = results
    assert result.sent > RATE, result  # the load really ran
    if result.unavoidable:
        assert set(result.errors) <= {"NoClusterError"}, (result.row(), result.errors)
    else:
        assert result.failed == 0, (result.row(), result.errors)
