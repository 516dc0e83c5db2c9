"""Outlier detection with an injected clock, and state carried across updates."""

from __future__ import annotations

import random

from proxyless_mesh.balancer import ClusterBalancer, Outcome
from proxyless_mesh.model import (
    Cluster,
    ClusterLoadAssignment,
    Endpoint,
    LbPolicy,
    Locality,
    LocalityEndpoints,
    OutlierDetection,
)

OD = OutlierDetection(
    consecutive_5xx=3,
    base_ejection_time=30.0,
    max_ejection_time=300.0,
    max_ejection_percent=100,
    interval=10.0,
)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def endpoints(n: int) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(f"10.0.0.{i + 1}", 80) for i in range(n))


def build(
    eps: tuple[Endpoint, ...],
    clock: Clock,
    od: OutlierDetection = OD,
    previous: ClusterBalancer | None = None,
    panic_threshold: float = 0.0,
    policy: LbPolicy = LbPolicy.ROUND_ROBIN,
) -> ClusterBalancer:
    cluster = Cluster(
        "svc", "svc", lb_policy=policy, outlier_detection=od, panic_threshold=panic_threshold
    )
    assignment = ClusterLoadAssignment("svc", (LocalityEndpoints(Locality(), eps),))
    return ClusterBalancer(
        cluster, assignment, previous=previous, clock=clock, rng=random.Random(3)
    )


def fail(b: ClusterBalancer, ep: Endpoint, times: int, outcome: Outcome = Outcome.HTTP_5XX) -> None:
    for _ in range(times):
        b.on_start(ep)
        b.on_finish(ep, outcome)


def picked(b: ClusterBalancer, n: int = 60) -> set[Endpoint | None]:
    return {b.pick() for _ in range(n)}


def test_ejected_after_n_consecutive_5xx_and_readmitted_after_base_time() -> None:
    clock = Clock()
    eps = endpoints(3)
    b = build(eps, clock)
    fail(b, eps[0], 2)
    assert eps[0] in picked(b)  # 2 < 3: still serving
    fail(b, eps[0], 1)
    assert b.is_ejected(eps[0])
    assert picked(b) == {eps[1], eps[2]}
    clock.now += 29.9
    assert eps[0] not in picked(b)
    clock.now += 0.1  # base_ejection_time has passed: readmitted at the next pick
    assert picked(b) == set(eps)
    assert not b.is_ejected(eps[0])


def test_second_ejection_lasts_twice_as_long_and_is_capped() -> None:
    clock = Clock()
    eps = endpoints(2)
    od = OutlierDetection(
        consecutive_5xx=1, base_ejection_time=30.0, max_ejection_time=70.0, max_ejection_percent=100
    )
    b = build(eps, clock, od)
    fail(b, eps[0], 1)
    clock.now += 30.0
    assert eps[0] in picked(b)
    fail(b, eps[0], 1)  # again, right after readmission: 2 x 30 s
    clock.now += 59.0
    assert eps[0] not in picked(b)
    clock.now += 1.0
    assert eps[0] in picked(b)
    fail(b, eps[0], 1)  # third time: 3 x 30 = 90 s, capped at 70 s
    clock.now += 70.0
    assert eps[0] in picked(b)


def test_the_multiplier_decays_while_the_endpoint_stays_healthy() -> None:
    clock = Clock()
    eps = endpoints(2)
    b = build(eps, clock)
    fail(b, eps[0], 3)
    clock.now += 30.0
    assert eps[0] in picked(b)
    clock.now += 10.0 * 5  # five healthy intervals: the multiplier is back to 0
    fail(b, eps[0], 3)
    clock.now += 30.0  # so this ejection is 1 x base again
    assert eps[0] in picked(b)


def test_success_resets_the_consecutive_count() -> None:
    clock = Clock()
    eps = endpoints(2)
    b = build(eps, clock)
    for _ in range(5):
        fail(b, eps[0], 2)
        fail(b, eps[0], 1, Outcome.SUCCESS)
    assert not b.is_ejected(eps[0])


def test_max_ejection_percent_is_never_exceeded() -> None:
    clock = Clock()
    eps = endpoints(10)
    od = OutlierDetection(consecutive_5xx=1, max_ejection_percent=30)
    b = build(eps, clock, od)
    for ep in eps:
        fail(b, ep, 3)
    ejected = [ep for ep in eps if b.is_ejected(ep)]
    assert len(ejected) == 3  # 30% of 10
    assert len(picked(b, 200)) == 7
    # Envoy's rule: (ejected + 1) / total <= max; with 10% of 3 endpoints nobody is ejected.
    small = build(endpoints(3), clock, OutlierDetection(consecutive_5xx=1))
    for ep in endpoints(3):
        fail(small, ep, 2)
    assert not any(small.is_ejected(ep) for ep in endpoints(3))


def test_a_vetoed_endpoint_is_ejected_once_room_frees_up() -> None:
    clock = Clock()
    eps = endpoints(2)
    b = build(eps, clock, OutlierDetection(consecutive_5xx=1, max_ejection_percent=50))
    fail(b, eps[0], 1)
    fail(b, eps[1], 1)  # vetoed: would make 100%
    assert b.is_ejected(eps[0]) and not b.is_ejected(eps[1])
    clock.now += 30.0
    b.pick()  # eps[0] readmitted
    fail(b, eps[1], 1)  # still failing: ejected now
    assert b.is_ejected(eps[1])


def test_gateway_and_local_origin_detectors() -> None:
    clock = Clock()
    eps = endpoints(4)
    gw = OutlierDetection(
        consecutive_5xx=None, consecutive_gateway_failure=2, max_ejection_percent=100
    )
    b = build(eps, clock, gw)
    fail(b, eps[0], 1, Outcome.GATEWAY_ERROR)
    fail(b, eps[0], 1, Outcome.HTTP_5XX)  # a non-gateway 5xx resets the gateway count
    fail(b, eps[0], 1, Outcome.GATEWAY_ERROR)
    assert not b.is_ejected(eps[0])
    fail(b, eps[0], 1, Outcome.GATEWAY_ERROR)
    assert b.is_ejected(eps[0])
    # Not split: a local-origin failure counts as a gateway error (and as a 5xx).
    fail(b, eps[1], 2, Outcome.LOCAL_ORIGIN_FAILURE)
    assert b.is_ejected(eps[1])
    split = OutlierDetection(
        consecutive_5xx=2,
        consecutive_local_origin_failure=3,
        split_external_local_origin_errors=True,
        max_ejection_percent=100,
    )
    s = build(eps, clock, split)
    fail(s, eps[2], 2, Outcome.LOCAL_ORIGIN_FAILURE)  # does not count as 5xx when split
    fail(s, eps[2], 1, Outcome.HTTP_5XX)
    assert not s.is_ejected(eps[2])
    fail(s, eps[2], 1, Outcome.LOCAL_ORIGIN_FAILURE)
    assert s.is_ejected(eps[2])


def test_all_ejected_reason_and_panic() -> None:
    clock = Clock()
    eps = endpoints(2)
    od = OutlierDetection(consecutive_5xx=1, max_ejection_percent=100)
    b = build(eps, clock, od, panic_threshold=0.0)
    fail(b, eps[0], 1)
    fail(b, eps[1], 1)
    assert b.pick() is None
    assert b.reason == "all 2 endpoints are ejected by outlier detection"
    clock.now += 30.0
    assert b.pick() is not None and b.reason == ""
    # With a panic threshold, Envoy balances over ejected endpoints instead of failing.
    p = build(eps, clock, od, panic_threshold=50.0)
    fail(p, eps[0], 1)
    fail(p, eps[1], 1)
    assert picked(p) == set(eps)


def test_state_carries_over_to_the_next_balancer() -> None:
    clock = Clock()
    eps = endpoints(3)
    b1 = build(eps, clock, policy=LbPolicy.LEAST_REQUEST)
    fail(b1, eps[0], 3)
    for _ in range(4):
        b1.on_start(eps[1])
    extra = Endpoint("10.0.0.9", 80)
    b2 = build((*eps, extra), clock, previous=b1, policy=LbPolicy.LEAST_REQUEST)
    assert b2.is_ejected(eps[0])  # ejection survives the update
    assert b2.in_flight(eps[1]) == 4  # in-flight counts too
    assert eps[0] not in picked(b2, 300)
    # A request started on the old balancer finishes there; the new one sees it.
    b1.on_finish(eps[1], Outcome.SUCCESS)
    assert b2.in_flight(eps[1]) == 3
    # An ejection recorded on the old balancer reaches the new one's picks.
    fail(b1, eps[2], 3)
    assert eps[2] not in picked(b2, 300)
    # Removed endpoints' state is dropped: re-adding starts clean.
    b3 = build((eps[1],), clock, previous=b2)
    b4 = build(eps, clock, previous=b3)
    assert not b4.is_ejected(eps[0]) and b4.in_flight(eps[1]) == 3


def test_outcome_from_status() -> None:
    assert Outcome.of_status(200) is Outcome.SUCCESS
    assert Outcome.of_status(404) is Outcome.SUCCESS
    assert Outcome.of_status(500) is Outcome.HTTP_5XX
    assert Outcome.of_status(501) is Outcome.HTTP_5XX
    assert all(Outcome.of_status(s) is Outcome.GATEWAY_ERROR for s in (502, 503, 504))


def test_in_flight_counts_stay_exact_across_threads_without_a_lock() -> None:
    """8 threads each start and finish 2,000 requests on one endpoint, with the
    interpreter switching threads every microsecond: every start is counted
    while they run and every finish after (a lost update would leave a
    count other than 16,000, then 0); a finish without a start never goes
    below 0."""
    import sys
    import threading

    eps = endpoints(1)
    balancer = build(eps, Clock(), policy=LbPolicy.LEAST_REQUEST)
    started = threading.Barrier(8)
    all_started = threading.Barrier(9)
    finish = threading.Event()

    def worker() -> None:
        started.wait()
        for _ in range(2_000):
            balancer.on_start(eps[0])
        all_started.wait()
        finish.wait()
        for _ in range(2_000):
            balancer.on_finish(eps[0], Outcome.SUCCESS)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        all_started.wait()
        assert balancer.in_flight(eps[0]) == 16_000
        finish.set()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    assert balancer.in_flight(eps[0]) == 0
    balancer.on_finish(eps[0], Outcome.SUCCESS)
    assert balancer.in_flight(eps[0]) == 0
