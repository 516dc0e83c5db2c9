"""Weighted round robin: exact proportions per cycle, and no bursts."""

from __future__ import annotations

import itertools
from collections import Counter

from proxyless_mesh.balancer import RoundRobinPicker, smooth_schedule, usable_endpoints
from proxyless_mesh.model import (
    ClusterLoadAssignment,
    Endpoint,
    HealthStatus,
    Locality,
    LocalityEndpoints,
)


def test_schedule_is_exact_per_cycle_and_smooth() -> None:
    order = smooth_schedule([5, 1, 1])
    assert Counter(order) == {0: 5, 1: 1, 2: 1}
    # Smooth: the heavy endpoint never runs more than 3 in a row here
    # (a naive expansion would give 5 in a row).
    longest = run = 1
    for a, b in itertools.pairwise(order):
        run = run + 1 if a == b else 1
        longest = max(longest, run)
    assert longest <= 3


def test_picker_cycles_through_every_endpoint_by_weight() -> None:
    eps = (Endpoint("10.0.0.1", 80, weight=3), Endpoint("10.0.0.2", 80, weight=1))
    picker = RoundRobinPicker(eps)
    counts = Counter(picker.pick() for _ in range(400))
    assert counts[eps[0]] == 300 and counts[eps[1]] == 100


def test_large_weight_sums_are_scaled_not_truncated() -> None:
    order = smooth_schedule([100_000, 50_000, 1])
    counts = Counter(order)
    assert abs(counts[0] / counts[1] - 2.0) < 0.01
    assert counts[2] >= 1


def test_empty_picker_returns_none() -> None:
    assert RoundRobinPicker(()).pick() is None


def cla(*groups: tuple[int, tuple[Endpoint, ...]]) -> ClusterLoadAssignment:
    return ClusterLoadAssignment(
        "c", tuple(LocalityEndpoints(Locality(), eps, priority=p) for p, eps in groups)
    )


def test_health_filter_and_priorities() -> None:
    healthy = Endpoint("10.0.0.1", 80, health=HealthStatus.HEALTHY)
    draining = Endpoint("10.0.0.2", 80, health=HealthStatus.DRAINING)
    backup = Endpoint("10.0.0.3", 80, health=HealthStatus.HEALTHY)
    assert usable_endpoints(cla((0, (healthy, draining)))).endpoints == (healthy,)
    # Priority 0 entirely draining: priority 1 serves.
    assert usable_endpoints(cla((0, (draining,)), (1, (backup,)))).endpoints == (backup,)
    empty = usable_endpoints(cla((0, (draining,))))
    assert empty.endpoints == () and "draining" in empty.reason
    assert "no endpoints" in usable_endpoints(cla()).reason
    assert "no endpoint assignment" in usable_endpoints(None).reason
