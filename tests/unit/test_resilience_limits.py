"""Circuit breaking: concurrent/pending requests, retry limits and budgets, release.

Many flows run interleaved by hand (the engine is sans-I/O), so "concurrent"
is exact here: every flow is suspended at a known command.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Collection
from typing import Any

import pytest

from proxyless_mesh.model import CircuitBreakers, Endpoint, RetryBudget, RetryPolicy
from proxyless_mesh.resilience import (
    Admission,
    AttemptResult,
    ClusterResources,
    Command,
    FailureKind,
    Finish,
    Flow,
    Send,
    Sleep,
    WaitForSlot,
    request_flow,
)

EPS = tuple(Endpoint(f"10.0.1.{i}", 9000) for i in range(1, 4))
CLUSTER = "outbound|9000||ratings.mesh"
S503 = AttemptResult(status=503)
S200 = AttemptResult(status=200)
OUTAGE = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=3)


def pick(exclude: Collection[Endpoint]) -> Endpoint | None:
    return next((e for e in EPS if e not in exclude), EPS[0])


def start(resources: ClusterResources, **overrides: Any) -> Flow:
    args: dict[str, Any] = {
        "route_name": "ratings",
        "cluster": CLUSTER,
        "policy": None,
        "route_timeout": None,
        "pick": pick,
        "resources": resources,
        "clock": lambda: 0.0,
        "rng": random.Random(1),
        "replayable": True,
    }
    args.update(overrides)
    return request_flow(**args)


def step(f: Flow, value: AttemptResult | None = None) -> Command | Finish:
    """Advance one command; the Finish when the flow ends."""
    try:
        return next(f) if value is None else f.send(value)
    except StopIteration as stop:
        finish: Finish = stop.value
        return finish


def assert_idle(resources: ClusterResources) -> None:
    assert (resources.active_requests, resources.pending_requests, resources.active_retries) == (
        0,
        0,
        0,
    )


def test_two_active_one_pending_and_five_overflow_at_once() -> None:
    resources = ClusterResources(CLUSTER, CircuitBreakers(max_requests=2, max_pending_requests=1))
    flows = [start(resources) for _ in range(8)]
    first = [step(f) for f in flows]
    assert [type(c).__name__ for c in first] == ["Send", "Send", "WaitForSlot"] + ["Finish"] * 5
    for finish in first[3:]:
        assert isinstance(finish, Finish) and finish.error is not None
        assert finish.error.flag == "UO" and finish.flags == ("UO",)
        assert "2 concurrent requests" in finish.error.message and CLUSTER in finish.error.message
    assert (resources.active_requests, resources.pending_requests) == (2, 1)
    assert resources.request_overflows == 5

    waiting = first[2]
    assert isinstance(waiting, WaitForSlot) and not waiting.ticket.granted
    # The pending request proceeds when an active one ends, keeping the slot count.
    done = step(flows[0], S200)
    assert isinstance(done, Finish) and done.use_last_response
    assert waiting.ticket.granted and waiting.ticket.wait(0)
    assert (resources.active_requests, resources.pending_requests) == (2, 0)
    assert isinstance(step(flows[2]), Send)
    for f in (flows[1], flows[2]):
        assert isinstance(step(f, S200), Finish)
    assert_idle(resources)


def test_counters_are_released_by_flows_abandoned_anywhere() -> None:
    resources = ClusterResources(CLUSTER, CircuitBreakers(max_requests=2, max_pending_requests=2))
    in_send = start(resources)
    in_backoff = start(resources, policy=OUTAGE)
    pending = start(resources)
    granted_unresumed = start(resources)
    assert isinstance(step(in_send), Send)
    assert isinstance(step(in_backoff), Send)
    assert isinstance(step(in_backoff, S503), Sleep)
    assert resources.active_retries == 1
    assert isinstance(step(pending), WaitForSlot)
    wait = step(granted_unresumed)
    assert isinstance(wait, WaitForSlot)
    assert (resources.active_requests, resources.pending_requests) == (2, 2)

    pending.close()  # leaves the line
    assert resources.pending_requests == 1
    in_send.close()  # hands its slot to the remaining ticket
    assert wait.ticket.granted
    granted_unresumed.close()  # never resumed: the granted slot is returned
    in_backoff.close()  # mid-backoff: its retry and its slot
    assert_idle(resources)


def test_flow_killed_by_an_exception_releases_too() -> None:
    resources = ClusterResources(CLUSTER)
    f = start(resources)
    assert isinstance(step(f), Send)
    with pytest.raises(KeyboardInterrupt):
        f.throw(KeyboardInterrupt())
    assert_idle(resources)


def _outage(resources: ClusterResources, requests: int) -> tuple[int, int]:
    """Every attempt fails 503; flows advance in lockstep waves. Returns
    (retries admitted in the first wave, total upstream attempts)."""
    flows = [start(resources, policy=OUTAGE) for _ in range(requests)]
    at = {i: step(f) for i, f in enumerate(flows)}
    attempts = 0
    first_wave: int | None = None
    while at:
        admitted = 0
        for i in list(at):
            cmd = at[i]
            assert isinstance(cmd, Send)
            attempts += 1
            nxt = step(flows[i], S503)
            if isinstance(nxt, Sleep):
                admitted += 1
                at[i] = step(flows[i])
            else:
                assert isinstance(nxt, Finish) and nxt.use_last_response
                del at[i]
        if first_wave is None:
            first_wave = admitted
    assert_idle(resources)
    return first_wave or 0, attempts


def test_retry_budget_caps_retries_during_an_outage() -> None:
    budget = CircuitBreakers(retry_budget=RetryBudget(budget_percent=20, min_retry_concurrency=3))
    resources = ClusterResources(CLUSTER, budget)
    first_wave, attempts = _outage(resources, 100)
    assert first_wave == 20  # 20 % of 100 active requests
    assert resources.retry_overflows >= 80
    assert attempts <= 100 * 1.2 + 3 * OUTAGE.num_retries

    unbounded = ClusterResources(CLUSTER, CircuitBreakers(max_retries=10_000))
    assert _outage(unbounded, 100) == (100, 400)


def test_budget_overflow_returns_the_response_flagged_uo() -> None:
    budget = CircuitBreakers(retry_budget=RetryBudget(budget_percent=20, min_retry_concurrency=0))
    resources = ClusterResources(CLUSTER, budget)
    f = start(resources, policy=OUTAGE)
    assert isinstance(step(f), Send)
    finish = step(f, S503)  # 20 % of one request is 0.2: no retry
    assert isinstance(finish, Finish) and finish.use_last_response and finish.flags == ("UO",)
    assert any("retry limit" in n for n in finish.notes)


def test_min_retry_concurrency_is_always_allowed() -> None:
    budget = CircuitBreakers(retry_budget=RetryBudget(budget_percent=20, min_retry_concurrency=3))
    assert _outage(ClusterResources(CLUSTER, budget), 5)[0] == 3


def test_max_retries_without_a_budget() -> None:
    assert _outage(ClusterResources(CLUSTER, CircuitBreakers(max_retries=2)), 5)[0] == 2


def test_retry_of_a_failure_denied_keeps_the_failure_flag_first() -> None:
    resources = ClusterResources(CLUSTER, CircuitBreakers(max_retries=0))
    policy = RetryPolicy(retry_on=frozenset({"connect-failure"}), num_retries=2)
    f = start(resources, policy=policy)
    assert isinstance(step(f), Send)
    finish = step(f, AttemptResult(failure=FailureKind.CONNECT_FAILURE))
    assert isinstance(finish, Finish) and finish.error is not None
    assert finish.flags == ("UF", "UO")
    assert_idle(resources)


def test_pending_request_times_out_at_the_route_deadline() -> None:
    resources = ClusterResources(CLUSTER, CircuitBreakers(max_requests=1, max_pending_requests=1))
    now = [0.0]
    holder = start(resources)
    assert isinstance(step(holder), Send)
    waiter = start(resources, route_timeout=0.5, clock=lambda: now[0])
    wait = step(waiter)
    assert isinstance(wait, WaitForSlot) and wait.timeout == 0.5
    now[0] = 0.5  # the driver's wait ran out
    finish = step(waiter)
    assert isinstance(finish, Finish) and finish.error is not None and finish.error.flag == "UT"
    assert resources.pending_requests == 0
    holder.close()
    assert_idle(resources)


def test_raising_the_limit_lets_waiting_requests_in() -> None:
    resources = ClusterResources(CLUSTER, CircuitBreakers(max_requests=1, max_pending_requests=5))
    assert resources.admit()[0] is Admission.ADMITTED
    _, ticket = resources.admit()
    assert ticket is not None and not ticket.granted
    resources.update(CircuitBreakers(max_requests=2, max_pending_requests=5))
    assert ticket.granted and resources.active_requests == 2
    resources.release_request()
    resources.release_request()
    assert_idle(resources)


def test_ticket_wakes_a_blocked_thread() -> None:
    resources = ClusterResources(CLUSTER, CircuitBreakers(max_requests=1, max_pending_requests=1))
    resources.admit()
    _, ticket = resources.admit()
    assert ticket is not None
    assert ticket.wait(0.01) is False  # not granted: the wait runs out
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(ticket.wait(10)))
    waiter.start()
    resources.release_request()
    waiter.join(10)
    assert got == [True]
    resources.release_request()
    assert_idle(resources)


async def test_ticket_wakes_an_awaiting_task_from_another_thread() -> None:
    resources = ClusterResources(CLUSTER, CircuitBreakers(max_requests=1, max_pending_requests=1))
    resources.admit()
    _, ticket = resources.admit()
    assert ticket is not None
    assert await ticket.wait_async(0.01) is False
    waiting = asyncio.ensure_future(ticket.wait_async(10))
    await asyncio.sleep(0)  # let it register its wake-up
    releaser = threading.Thread(target=resources.release_request)
    releaser.start()
    assert await waiting is True
    releaser.join()
    resources.release_request()
    assert_idle(resources)
