"""Differential tests of the per-request decision's two split-offs (issue 25).

1. The Rust core's `ClusterCounters` against its Python reference
   (tests/oracles/limits.py): the same answers and the same numbers
   after every operation of generated sequences on generated limits.
2. `FirstTry` (the flow without generators for requests without a fault or
   a timeout) against the general generator flow (`_flow`): on generated
   retry policies, limits, endpoint sets and answers, the same commands,
   the same Finish and the same counters, also when the driver abandons the
   flow midway."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from oracles.limits import ClusterCounters as PythonCounters

from proxyless_mesh.model import CircuitBreakers, Endpoint, RetryBudget, RetryPolicy
from proxyless_mesh.resilience import (
    AttemptResult,
    ClusterResources,
    FailureKind,
    Finish,
    Send,
    Sleep,
    WaitForSlot,
)
from proxyless_mesh.resilience._counters import limits_spec, native_counters
from proxyless_mesh.resilience._flow import FirstTry, _flow, request_flow

limits = st.builds(
    CircuitBreakers,
    max_pending_requests=st.integers(0, 3),
    max_requests=st.integers(0, 4),
    max_retries=st.integers(0, 3),
    retry_budget=st.none()
    | st.builds(
        RetryBudget,
        budget_percent=st.sampled_from([0.0, 20.0, 33.3, 50.0, 100.0]),
        min_retry_concurrency=st.integers(0, 2),
    ),
)
OPERATIONS = (
    "admit_now",
    "admit",
    "release_request",
    "release_now",
    "take_waiting",
    "leave_line",
    "try_acquire_retry",
    "release_retry",
    "set_limits",
)


@given(limits, st.lists(st.tuples(st.sampled_from(OPERATIONS), limits), max_size=60))
def test_native_counters_answer_as_the_python_ones(
    first: CircuitBreakers, steps: list[tuple[str, CircuitBreakers]]
) -> None:
    native, python = native_counters(limits_spec(first)), PythonCounters(limits_spec(first))
    for name, new_limits in steps:
        active, pending, retries, _, _ = python.snapshot()
        if {
            "release_request": active,
            "release_now": active,
            "leave_line": pending,
            "release_retry": retries,
        }.get(name, 1) <= 0:
            continue  # the owner never releases what nobody holds
        args = (limits_spec(new_limits),) if name == "set_limits" else ()
        assert getattr(native, name)(*args) == getattr(python, name)(*args), name
        assert native.snapshot() == python.snapshot(), name


# -- FirstTry against the general flow ---------------------------------------

ENDPOINTS = tuple(Endpoint(f"10.0.0.{i}", 8080) for i in range(1, 4))
CONDITIONS = ["5xx", "gateway-error", "connect-failure", "retriable-status-codes", "reset"]
policies = st.none() | st.builds(
    RetryPolicy,
    retry_on=st.frozensets(st.sampled_from([*CONDITIONS, "retriable-4xx"]), max_size=3),
    num_retries=st.integers(0, 3),
    retriable_status_codes=st.sampled_from([(), (503,), (500, 409)]),
    retry_other_hosts=st.booleans(),
)
answers = st.sampled_from(
    [
        AttemptResult(status=200),
        AttemptResult(status=503),
        AttemptResult(status=500),
        AttemptResult(status=409),
        AttemptResult(status=200, grpc_status=14),
        AttemptResult(failure=FailureKind.CONNECT_FAILURE),
        AttemptResult(failure=FailureKind.RESET),
        AttemptResult(failure=FailureKind.REFUSED_STREAM),
    ]
)


def _pick(endpoints: tuple[Endpoint, ...]) -> Callable[[Collection[Endpoint]], Endpoint | None]:
    turn = iter(range(10**6))

    def pick(exclude: Collection[Endpoint]) -> Endpoint | None:
        if not endpoints:
            return None
        choice = endpoints[next(turn) % len(endpoints)]
        fresh = [e for e in endpoints if e not in exclude]
        return choice if choice in fresh or not fresh else fresh[0]

    return pick


def _run(first_try: bool, case: dict[str, Any]) -> tuple[list[Any], Any, tuple[int, ...]]:
    """Drive one flow as a driver would; others hold `busy` slots and give
    one back whenever the flow waits. What it did, how it ended, the counters."""
    resources = ClusterResources("c", case["limits"])
    held = [resources.admit()[0] for _ in range(case["busy"])]
    now = [100.0]
    args = {
        "route_name": "r",
        "cluster": "c",
        "policy": case["policy"],
        "route_timeout": None,
        "pick": _pick(ENDPOINTS[: case["endpoints"]]),
        "resources": resources,
        "clock": lambda: now[0],
        "rng": random.Random(case["seed"]),
        "replayable": case["replayable"],
        "no_endpoint_reason": lambda: "none left",
    }
    if first_try:
        flow: Any = request_flow(**args)
        assert isinstance(flow, FirstTry)
    else:
        flow = _flow(**{**args, "fault": None})
    seen: list[Any] = []
    script = iter(case["answers"])
    reply = None
    end: Any = None
    try:
        for _ in range(case["stop_after"]):
            command = flow.send(reply)
            if type(command) is Send:
                seen.append(("send", command.endpoint, command.timeout, command.headers))
                reply = next(script, AttemptResult(status=200))
            elif type(command) is Sleep:
                seen.append(("sleep", command.seconds))
                now[0] += command.seconds
                reply = None
            else:
                assert type(command) is WaitForSlot
                seen.append(("wait", command.timeout))
                if held:
                    held.pop()
                    resources.release_request()
                reply = None
        end = "abandoned"
    except StopIteration as stop:
        end = stop.value
    finally:
        flow.close()
    if isinstance(end, Finish):
        assert end.attempts >= 0
    return seen, end, resources._counters.snapshot()


@given(
    st.fixed_dictionaries(
        {
            "limits": limits,
            "busy": st.integers(0, 5),
            "policy": policies,
            "endpoints": st.integers(0, 3),
            "seed": st.integers(0, 2**32),
            "replayable": st.booleans(),
            "answers": st.lists(answers, max_size=5),
            "stop_after": st.integers(1, 12),
        }
    )
)
def test_first_try_does_what_the_general_flow_does(case: dict[str, Any]) -> None:
    assert _run(True, case) == _run(False, case)


@given(policies, answers)
def test_the_drivers_fast_path_ends_as_the_generator(
    policy: RetryPolicy | None, answer: AttemptResult
) -> None:
    """`drive` calls FirstTry.answered instead of send: the same Finish."""
    from proxyless_mesh.resilience import drive

    finishes = []
    for first_try in (True, False):
        resources = ClusterResources("c", CircuitBreakers())
        args = {
            "route_name": "r",
            "cluster": "c",
            "policy": policy,
            "route_timeout": None,
            "pick": _pick(ENDPOINTS[:2]),
            "resources": resources,
            "clock": lambda: 100.0,
            "rng": random.Random(1),
            "replayable": True,
            "no_endpoint_reason": lambda: "none left",
        }
        flow: Any = request_flow(**args) if first_try else _flow(**{**args, "fault": None})
        script = [answer]

        def attempt(send: Send, script: list[AttemptResult] = script) -> AttemptResult:
            return script.pop() if script else AttemptResult(status=200)

        finishes.append((drive(flow, attempt, lambda: None), resources._counters.snapshot()))
    assert finishes[0] == finishes[1]
