"""Health, priorities, localities, panic, slow start and empty reasons,
checked as traffic shares over many picks (seeded, stated tolerances)."""

from __future__ import annotations

import random
from collections import Counter

from proxyless_mesh.balancer import ClusterBalancer
from proxyless_mesh.model import (
    Cluster,
    ClusterLoadAssignment,
    Endpoint,
    HealthStatus,
    LbPolicy,
    Locality,
    LocalityEndpoints,
    SlowStartConfig,
)

H = HealthStatus
LOCAL = Locality("eu", "eu-a")
REMOTE = Locality("eu", "eu-b")
N = 20_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def eps(prefix: str, *health: HealthStatus) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(f"{prefix}.{i + 1}", 80, health=h) for i, h in enumerate(health))


def zone(
    locality: Locality, endpoints: tuple[Endpoint, ...], priority: int = 0, weight: int = 1
) -> LocalityEndpoints:
    return LocalityEndpoints(locality, endpoints, weight=weight, priority=priority)


def build(
    *localities: LocalityEndpoints,
    policy: LbPolicy = LbPolicy.RANDOM,
    previous: ClusterBalancer | None = None,
    clock: Clock | None = None,
    overprovisioning: int = 140,
    **cluster_fields: object,
) -> ClusterBalancer:
    cluster = Cluster("svc", "svc", lb_policy=policy, **cluster_fields)  # type: ignore[arg-type]
    assignment = ClusterLoadAssignment("svc", localities, overprovisioning_factor=overprovisioning)
    return ClusterBalancer(
        cluster,
        assignment,
        previous=previous,
        clock=clock or Clock(),
        rng=random.Random(11),
    )


def share(b: ClusterBalancer, prefix: str, n: int = N) -> float:
    picks = [b.pick() for _ in range(n)]
    return sum(1 for e in picks if e is not None and e.address.startswith(prefix)) / n


def test_health_statuses() -> None:
    b = build(zone(LOCAL, eps("a", H.HEALTHY, H.UNKNOWN, H.DRAINING, H.UNHEALTHY, H.TIMEOUT)))
    assert set(Counter(b.pick() for _ in range(2000))) == {
        Endpoint("a.1", 80, health=H.HEALTHY),
        Endpoint("a.2", 80, health=H.UNKNOWN),
    }


def test_degraded_only_when_healthy_cannot_take_the_load() -> None:
    healthy_and_degraded = eps("a", H.HEALTHY, H.HEALTHY, H.DEGRADED)
    b = build(zone(LOCAL, healthy_and_degraded))
    # 2/3 healthy * 1.4 = 93% stays on healthy, 7% on degraded (Envoy's degraded load).
    assert abs(share(b, "a.3") - 0.0667) < 0.01
    only_degraded = build(zone(LOCAL, eps("a", H.DEGRADED, H.DRAINING)))
    assert {only_degraded.pick() for _ in range(100)} == {Endpoint("a.1", 80, health=H.DEGRADED)}


def test_local_zone_failure_moves_traffic_to_priority_1_and_back() -> None:
    clock = Clock()
    local = zone(LOCAL, eps("local", H.HEALTHY, H.HEALTHY), priority=0)
    remote = zone(REMOTE, eps("remote", H.HEALTHY, H.HEALTHY), priority=1)
    b = build(local, remote, clock=clock)
    assert share(b, "local") == 1.0
    down = zone(LOCAL, eps("local", H.UNHEALTHY, H.UNHEALTHY), priority=0)
    b = build(down, remote, previous=b, clock=clock)
    assert share(b, "remote") == 1.0
    b = build(local, remote, previous=b, clock=clock)
    assert share(b, "local") == 1.0


def test_overprovisioning_spills_part_of_the_load() -> None:
    local = zone(LOCAL, eps("local", H.HEALTHY, H.UNHEALTHY), priority=0)
    remote = zone(REMOTE, eps("remote", H.HEALTHY, H.HEALTHY), priority=1)
    # 50% healthy * 1.4 = 70% stays local, 30% spills (sd 0.3%).
    assert abs(share(build(local, remote), "local") - 0.70) < 0.015
    # Factor 100: exactly the healthy share stays.
    assert abs(share(build(local, remote, overprovisioning=100), "local") - 0.50) < 0.015
    # 4 of 5 healthy * 1.4 > 100%: no spill at all.
    mostly = zone(LOCAL, eps("local", H.HEALTHY, H.HEALTHY, H.HEALTHY, H.HEALTHY, H.UNHEALTHY))
    assert share(build(mostly, remote), "local") == 1.0


def test_panic_threshold_balances_over_all_endpoints() -> None:
    sick = zone(LOCAL, eps("a", H.HEALTHY, H.UNHEALTHY, H.UNHEALTHY, H.UNHEALTHY))
    # 25% healthy < 50% threshold and nowhere to spill: panic, all four serve.
    b = build(sick, panic_threshold=50.0)
    counts = Counter(e.address for e in (b.pick() for _ in range(N)) if e is not None)
    assert set(counts) == {"a.1", "a.2", "a.3", "a.4"}
    assert all(abs(c / N - 0.25) < 0.015 for c in counts.values())
    # Threshold 0 disables panic: only the healthy endpoint serves.
    calm = build(sick, panic_threshold=0.0)
    assert {e.address for e in (calm.pick() for _ in range(500)) if e} == {"a.1"}
    # Enough healthy capacity in priority 1: no panic, priority 1 takes the spill.
    backup = zone(REMOTE, eps("b", H.HEALTHY, H.HEALTHY), priority=1)
    spill = build(sick, backup, panic_threshold=50.0)
    picked = {e.address for e in (spill.pick() for _ in range(2000)) if e}
    assert picked == {"a.1", "b.1", "b.2"}


def test_panic_never_sends_to_draining() -> None:
    b = build(zone(LOCAL, eps("a", H.UNHEALTHY, H.DRAINING)), panic_threshold=50.0)
    assert {b.pick() for _ in range(200)} == {Endpoint("a.1", 80, health=H.UNHEALTHY)}


def test_locality_weights_scaled_by_health() -> None:
    a = zone(LOCAL, eps("a", H.HEALTHY, H.HEALTHY), weight=3)
    b = zone(REMOTE, eps("b", H.HEALTHY, H.HEALTHY), weight=1)
    assert abs(share(build(a, b), "a") - 0.75) < 0.015
    # Zone a at 50% health: availability min(1, 1.4 * 0.5) = 0.7 -> 3*0.7 : 1.
    half = zone(LOCAL, eps("a", H.HEALTHY, H.UNHEALTHY), weight=3)
    assert abs(share(build(half, b), "a") - 2.1 / 3.1) < 0.015
    # Weight 0: that locality gets nothing while another has weight.
    zero = zone(REMOTE, eps("b", H.HEALTHY), weight=0)
    assert share(build(a, zero), "a") == 1.0


def test_round_robin_encodes_priority_and_locality_weights() -> None:
    a = zone(LOCAL, eps("a", H.HEALTHY, H.HEALTHY), weight=3)
    b = zone(REMOTE, eps("b", H.HEALTHY, H.HEALTHY), weight=1)
    rr = build(a, b, policy=LbPolicy.ROUND_ROBIN)
    assert abs(share(rr, "a", 8000) - 0.75) < 0.001  # exact per cycle


def test_empty_reasons() -> None:
    nothing = ClusterBalancer(None, None, name="svc")
    assert nothing.pick() is None and "no such cluster" in nothing.reason
    cluster = Cluster("svc", "svc")
    waiting = ClusterBalancer(cluster, None)
    assert waiting.pick() is None and "no endpoint assignment yet" in waiting.reason
    assert waiting.name == "svc"
    empty = build()
    assert empty.pick() is None and empty.reason == "no endpoints are registered"
    down = build(zone(LOCAL, eps("a", H.UNHEALTHY, H.DRAINING, H.TIMEOUT)), panic_threshold=0.0)
    assert down.pick() is None and down.reason == "all 3 endpoints are unhealthy or draining"
    up = build(zone(LOCAL, eps("a", H.HEALTHY)))
    assert up.pick() is not None and up.reason == ""


def test_slow_start_ramps_a_new_endpoint() -> None:
    clock = Clock()
    old = eps("old", H.HEALTHY, H.HEALTHY, H.HEALTHY)
    new = Endpoint("new.1", 80, health=H.HEALTHY)
    config = SlowStartConfig(window=60.0, aggression=1.0, min_weight_percent=10.0)
    fields: dict[str, object] = {"policy": LbPolicy.ROUND_ROBIN, "slow_start": config}
    # Endpoints of the first assignment ever seen are not in slow start.
    b = build(zone(LOCAL, old), clock=clock, **fields)  # type: ignore[arg-type]
    assert abs(share(b, "old.1", 3000) - 1 / 3) < 0.01
    b = build(zone(LOCAL, (*old, new)), previous=b, clock=clock, **fields)  # type: ignore[arg-type]

    def new_share() -> float:
        return share(b, "new", 8000)

    # t=0: weight floor 10% -> 0.1 / 3.1 = 3.2%.
    assert abs(new_share() - 0.1 / 3.1) < 0.01
    clock.now += 30.0  # half way, linear ramp: 0.5 / 3.5 = 14.3%
    assert abs(new_share() - 0.5 / 3.5) < 0.01
    clock.now += 30.0  # done: an equal share
    assert abs(new_share() - 0.25) < 0.01
    # The first-seen time survives further updates: no second ramp.
    b = build(zone(LOCAL, (*old, new)), previous=b, clock=clock, **fields)  # type: ignore[arg-type]
    assert abs(new_share() - 0.25) < 0.01


def test_slow_start_aggression_shapes_the_ramp() -> None:
    clock = Clock()
    old = eps("old", H.HEALTHY)
    new = Endpoint("new.1", 80)
    config = SlowStartConfig(window=100.0, aggression=2.0, min_weight_percent=1.0)
    b = build(zone(LOCAL, old), clock=clock, policy=LbPolicy.LEAST_REQUEST, slow_start=config)
    b = build(
        zone(LOCAL, (*old, new)),
        previous=b,
        clock=clock,
        policy=LbPolicy.LEAST_REQUEST,
        slow_start=config,
    )
    clock.now += 25.0  # (0.25) ** (1/2) = 0.5 -> 0.5 / 1.5 = 33%
    assert abs(share(b, "new") - 1 / 3) < 0.015
