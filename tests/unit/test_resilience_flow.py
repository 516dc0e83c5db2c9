"""The request engine driven by a scripted upstream: retries, timeouts, faults, headers.

Pure logic, so the upstream is a function from a Send to an AttemptResult and
time is a fake clock the "driver" below advances by what each command costs.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from typing import Any

import pytest
from stats import assert_binomial

from proxyless_mesh.model import (
    Endpoint,
    FaultAbort,
    FaultConfig,
    FaultDelay,
    HeaderMatcher,
    MatchKind,
    RetryPolicy,
    StringMatcher,
)
from proxyless_mesh.resilience import (
    AttemptResult,
    ClusterResources,
    Command,
    FailureKind,
    Finish,
    Flow,
    Send,
    Sleep,
    compile_retry_on,
    request_flow,
)

EPS = tuple(Endpoint(f"10.0.0.{i}", 8080) for i in range(1, 5))
ROUTE = "reviews-route"
CLUSTER = "outbound|8080||reviews.mesh"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pick_first_fresh(endpoints: tuple[Endpoint, ...] = EPS) -> Callable[..., Endpoint | None]:
    def pick(exclude: Collection[Endpoint]) -> Endpoint | None:
        fresh = [e for e in endpoints if e not in exclude] or list(endpoints)
        return fresh[0] if fresh else None

    return pick


def flow(clock: Clock, **overrides: Any) -> Flow:
    args: dict[str, Any] = {
        "route_name": ROUTE,
        "cluster": CLUSTER,
        "policy": None,
        "route_timeout": None,
        "pick": pick_first_fresh(),
        "resources": ClusterResources(CLUSTER),
        "clock": clock,
        "rng": random.Random(7),
        "replayable": True,
    }
    args.update(overrides)
    return request_flow(**args)


def drive(
    f: Flow, respond: Callable[[Send], AttemptResult], clock: Clock
) -> tuple[list[Command], Finish]:
    """A fake driver: Sleeps advance the clock, Sends ask `respond`."""
    commands: list[Command] = []
    try:
        cmd = next(f)
        while True:
            commands.append(cmd)
            if isinstance(cmd, Sleep):
                clock.now += cmd.seconds
                cmd = f.send(None)
            elif isinstance(cmd, Send):
                cmd = f.send(respond(cmd))
            else:
                raise AssertionError(f"unexpected {cmd}")
    except StopIteration as stop:
        return commands, stop.value


def scripted(*results: AttemptResult) -> Callable[[Send], AttemptResult]:
    it = iter(results)
    return lambda send: next(it)


def sends(commands: list[Command]) -> list[Send]:
    return [c for c in commands if isinstance(c, Send)]


def sleeps(commands: list[Command]) -> list[Sleep]:
    return [c for c in commands if isinstance(c, Sleep)]


S503 = AttemptResult(status=503)
S200 = AttemptResult(status=200)


def test_5xx_is_not_retried_without_the_5xx_condition() -> None:
    clock = Clock()
    policy = RetryPolicy(retry_on=frozenset({"connect-failure", "refused-stream"}), num_retries=2)
    commands, finish = drive(flow(clock, policy=policy), scripted(S503), clock)
    assert len(sends(commands)) == 1
    assert finish.use_last_response and finish.error is None and finish.flags == ()


def test_5xx_retried_on_distinct_endpoints_with_jittered_backoff() -> None:
    clock = Clock()
    policy = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=3)
    commands, finish = drive(flow(clock, policy=policy), scripted(S503, S503, S200), clock)
    tries = sends(commands)
    assert [s.attempt for s in tries] == [1, 2, 3]
    assert len({s.endpoint for s in tries}) == 3
    waits = sleeps(commands)
    assert len(waits) == 2
    assert 0 <= waits[0].seconds <= 0.025 and 0 <= waits[1].seconds <= 0.075
    assert finish.use_last_response and finish.attempts == 3 and "URX" not in finish.flags


def test_retries_exhausted_return_the_last_response_flagged_urx() -> None:
    clock = Clock()
    policy = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=2)
    commands, finish = drive(flow(clock, policy=policy), scripted(S503, S503, S503), clock)
    assert len(sends(commands)) == 3
    assert finish.use_last_response and finish.flags == ("URX",)


def test_connect_failure_is_retried_on_another_endpoint() -> None:
    clock = Clock()
    policy = RetryPolicy(retry_on=frozenset({"connect-failure"}), num_retries=2)
    failed = AttemptResult(failure=FailureKind.CONNECT_FAILURE)
    commands, finish = drive(flow(clock, policy=policy), scripted(failed, S200), clock)
    first, second = sends(commands)
    assert first.endpoint != second.endpoint
    assert finish.use_last_response


def test_exhausted_connect_failures_raise_uf_with_urx() -> None:
    clock = Clock()
    policy = RetryPolicy(retry_on=frozenset({"connect-failure"}), num_retries=1)
    failed = AttemptResult(failure=FailureKind.CONNECT_FAILURE)
    _, finish = drive(flow(clock, policy=policy), scripted(failed, failed), clock)
    assert finish.error is not None and finish.error.flag == "UF"
    assert finish.flags == ("UF", "URX")
    assert "10.0.0.2:8080" in finish.error.message and CLUSTER in finish.error.message


def test_reset_is_not_a_connect_failure() -> None:
    clock = Clock()
    policy = RetryPolicy(retry_on=frozenset({"connect-failure"}), num_retries=3)
    reset = AttemptResult(failure=FailureKind.RESET)
    commands, finish = drive(flow(clock, policy=policy), scripted(reset), clock)
    assert len(sends(commands)) == 1
    assert finish.error is not None and finish.error.flag == "UC"


def _headers(**values: str) -> Callable[[str], str | None]:
    return {k.replace("_", "-"): v for k, v in values.items()}.get


@pytest.mark.parametrize(
    ("retry_on", "result", "retried"),
    [
        ({"5xx"}, AttemptResult(status=500), True),
        ({"5xx"}, AttemptResult(failure=FailureKind.TIMEOUT), True),
        ({"5xx"}, AttemptResult(status=429), False),
        ({"gateway-error"}, AttemptResult(status=502), True),
        ({"gateway-error"}, AttemptResult(status=504), True),
        ({"gateway-error"}, AttemptResult(status=500), False),
        ({"reset"}, AttemptResult(failure=FailureKind.RESET), True),
        ({"reset"}, AttemptResult(failure=FailureKind.TIMEOUT), True),
        ({"reset"}, AttemptResult(status=503), False),
        ({"refused-stream"}, AttemptResult(failure=FailureKind.REFUSED_STREAM), True),
        ({"refused-stream"}, AttemptResult(failure=FailureKind.RESET), False),
        ({"retriable-4xx"}, AttemptResult(status=409), True),
        ({"retriable-4xx"}, AttemptResult(status=404), False),
        ({"retriable-status-codes"}, AttemptResult(status=429), True),
        ({"retriable-status-codes"}, AttemptResult(status=503), False),
        ({"retriable-headers"}, AttemptResult(status=200, headers=_headers(x_retry="yes")), True),
        ({"retriable-headers"}, AttemptResult(status=200, headers=_headers(x_other="1")), False),
        ({"unavailable"}, AttemptResult(status=200, grpc_status=14), True),
        ({"cancelled", "internal"}, AttemptResult(status=200, grpc_status=13), True),
        ({"resource-exhausted"}, AttemptResult(status=200, grpc_status=8), True),
        ({"deadline-exceeded"}, AttemptResult(status=200, grpc_status=4), True),
        ({"unavailable"}, AttemptResult(status=200, grpc_status=13), False),
        ({"5xx"}, AttemptResult(status=503, headers=_headers(x_envoy_overloaded="true")), False),
    ],
)
def test_retry_on_conditions_follow_envoy(
    retry_on: set[str], result: AttemptResult, retried: bool
) -> None:
    policy = RetryPolicy(
        retry_on=frozenset(retry_on),
        retriable_status_codes=(429,),
        retriable_headers=(HeaderMatcher("x-retry", StringMatcher(MatchKind.EXACT, "yes")),),
    )
    assert compile_retry_on(policy)(result) is retried


def test_per_try_timeout_bounds_each_try_and_the_route_timeout_the_whole() -> None:
    clock = Clock()
    start = clock.now
    policy = RetryPolicy(
        retry_on=frozenset({"5xx"}),
        num_retries=10,
        per_try_timeout=0.3,
        base_interval=0.001,
        max_interval=0.001,
    )

    def hang(send: Send) -> AttemptResult:
        assert send.timeout is not None
        clock.now += send.timeout
        return AttemptResult(failure=FailureKind.TIMEOUT)

    commands, finish = drive(flow(clock, policy=policy, route_timeout=1.0), hang, clock)
    tries = sends(commands)
    assert tries[0].timeout == pytest.approx(0.3)
    assert all(s.timeout is not None and s.timeout <= 0.3 + 1e-9 for s in tries)
    assert len({s.endpoint for s in tries[:4]}) == 4
    assert finish.error is not None and finish.error.flag == "UT"
    assert ROUTE in finish.error.message and "1s" in finish.error.message
    assert finish.error.timeout == 1.0
    assert clock.now - start <= 1.0 + 1e-9


def test_per_try_timeout_then_success_elsewhere() -> None:
    clock = Clock()
    policy = RetryPolicy(retry_on=frozenset({"reset"}), num_retries=2, per_try_timeout=0.2)
    timed_out = AttemptResult(failure=FailureKind.TIMEOUT)
    commands, finish = drive(
        flow(clock, policy=policy, route_timeout=2.0), scripted(timed_out, S200), clock
    )
    first, second = sends(commands)
    assert first.endpoint != second.endpoint and second.timeout == pytest.approx(0.2)
    assert finish.use_last_response


def test_exhausted_per_try_timeouts_raise_ut_naming_the_per_try_limit() -> None:
    clock = Clock()
    policy = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=1, per_try_timeout=0.2)
    timed_out = AttemptResult(failure=FailureKind.TIMEOUT)
    _, finish = drive(flow(clock, policy=policy), scripted(timed_out, timed_out), clock)
    assert finish.error is not None and finish.error.flag == "UT"
    assert finish.error.timeout == 0.2 and "0.2s" in finish.error.message
    assert finish.flags == ("UT", "URX")


def test_slow_upstream_fails_at_the_route_timeout() -> None:
    clock = Clock()

    def slow(send: Send) -> AttemptResult:
        assert send.timeout == pytest.approx(0.5)
        clock.now += 0.5
        return AttemptResult(failure=FailureKind.TIMEOUT)

    commands, finish = drive(flow(clock, route_timeout=0.5), slow, clock)
    assert len(sends(commands)) == 1
    assert finish.error is not None and finish.error.flag == "UT"
    assert "'reviews-route'" in finish.error.message and "0.5s" in finish.error.message


def test_route_timeout_bounds_retries_of_slow_failures() -> None:
    clock = Clock()
    start = clock.now
    policy = RetryPolicy(
        retry_on=frozenset({"5xx"}), num_retries=10, base_interval=0.001, max_interval=0.001
    )

    def slow_503(send: Send) -> AttemptResult:
        assert send.timeout is not None
        if send.timeout < 0.3:
            clock.now += send.timeout
            return AttemptResult(failure=FailureKind.TIMEOUT)
        clock.now += 0.3
        return S503

    commands, finish = drive(flow(clock, policy=policy, route_timeout=1.0), slow_503, clock)
    assert len(sends(commands)) == 4
    assert finish.error is not None and finish.error.flag == "UT"
    assert clock.now - start <= 1.0 + 1e-9


def test_no_retry_when_the_deadline_would_pass_during_backoff() -> None:
    clock = Clock()
    policy = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=3)

    def almost_deadline(send: Send) -> AttemptResult:
        clock.now += 1.0 - 1e-7
        return S503

    commands, finish = drive(flow(clock, policy=policy, route_timeout=1.0), almost_deadline, clock)
    assert len(sends(commands)) == 1
    assert finish.use_last_response
    assert any("route timeout" in note for note in finish.notes)


def test_unreplayable_body_is_not_retried_and_says_why() -> None:
    clock = Clock()
    policy = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=3)
    commands, finish = drive(
        flow(clock, policy=policy, replayable=False), scripted(S503, S200), clock
    )
    assert len(sends(commands)) == 1
    assert finish.use_last_response and any("replayed" in n for n in finish.notes)


def test_headers_per_try() -> None:
    clock = Clock()
    policy = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=2, per_try_timeout=0.25)
    commands, _ = drive(flow(clock, policy=policy), scripted(S503, S503, S200), clock)
    assert [dict(s.headers) for s in sends(commands)] == [
        {"x-envoy-attempt-count": str(n), "x-envoy-expected-rq-timeout-ms": "250"}
        for n in (1, 2, 3)
    ]

    clock = Clock()
    commands, _ = drive(flow(clock, route_timeout=2.0), scripted(S200), clock)
    assert dict(sends(commands)[0].headers)["x-envoy-expected-rq-timeout-ms"] == "2000"

    clock = Clock()
    commands, _ = drive(flow(clock), scripted(S200), clock)
    only = sends(commands)[0]
    assert only.headers == (("x-envoy-attempt-count", "1"),) and only.timeout is None


def test_no_endpoint_fails_uh_with_the_balancer_reason() -> None:
    clock = Clock()
    f = flow(clock, pick=lambda exclude: None, no_endpoint_reason=lambda: "all 3 draining")
    commands, finish = drive(f, scripted(), clock)
    assert commands == []
    assert finish.error is not None and finish.error.flag == "UH"
    assert "all 3 draining" in finish.error.message and CLUSTER in finish.error.message


def test_fault_delay_precedes_the_request_and_is_flagged_di() -> None:
    clock = Clock()
    fault = FaultConfig(delay=FaultDelay(delay=1.5, percentage=100))
    commands, finish = drive(flow(clock, fault=fault, route_timeout=1.0), scripted(S200), clock)
    assert commands[0] == Sleep(1.5) and isinstance(commands[1], Send)
    # The route timeout starts after the delay, as Envoy's router timer does.
    assert commands[1].timeout == pytest.approx(1.0)
    assert finish.use_last_response and finish.flags == ("DI",)


def test_fault_abort_answers_without_sending_or_taking_a_slot() -> None:
    clock = Clock()
    resources = ClusterResources(CLUSTER)
    fault = FaultConfig(abort=FaultAbort(percentage=100, http_status=503))
    commands, finish = drive(flow(clock, fault=fault, resources=resources), scripted(), clock)
    assert commands == []
    assert finish.abort_status == 503 and finish.flags == ("FI",)
    assert resources.active_requests == 0

    grpc_fault = FaultConfig(abort=FaultAbort(percentage=100, grpc_status=14))
    _, finish = drive(flow(clock, fault=grpc_fault), scripted(), clock)
    assert finish.abort_grpc_status == 14 and finish.abort_status is None


def test_fault_percentages_hold_over_ten_thousand_draws() -> None:
    rng = random.Random(2024)
    fault = FaultConfig(
        delay=FaultDelay(delay=0.01, percentage=30),
        abort=FaultAbort(percentage=20, http_status=500),
    )
    delayed = aborted = 0
    for _ in range(10_000):
        clock = Clock()
        _, finish = drive(flow(clock, fault=fault, rng=rng), scripted(S200), clock)
        delayed += "DI" in finish.flags
        aborted += finish.abort_status == 500
    assert_binomial(delayed, 10_000, 0.30, "delayed at 30 %")
    assert_binomial(aborted, 10_000, 0.20, "aborted at 20 %")
