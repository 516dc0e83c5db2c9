"""Differential test of the whole per-request decision after the route
(issue 25): one world built with the native core (circuit-breaker counters,
flat and hash picks) and one with the Python references patched in at the
same seams (tests/oracles: `ClusterCounters`, `FlatPicker`, `HashPicker`)
run the same generated cluster (policy, weights, limits, outlier detection),
retry policies, hash keys and interleaved request/answer schedules through
`request_flow`, the balancer's in-flight and outcome counting, and demand
the same trace: every command, every Finish, the counters, the in-flight
counts and the ejections after every step."""

from __future__ import annotations

import random
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import limits as limits_oracle
from oracles import pickers as pickers_oracle

from proxyless_mesh.balancer import ClusterBalancer, Outcome, _cluster
from proxyless_mesh.balancer import _pickers as pickers
from proxyless_mesh.model import (
    CircuitBreakers,
    Cluster,
    ClusterLoadAssignment,
    Endpoint,
    LbPolicy,
    Locality,
    LocalityEndpoints,
    MaglevConfig,
    OutlierDetection,
    RetryPolicy,
    RingHashConfig,
)
from proxyless_mesh.resilience import (
    AttemptResult,
    ClusterResources,
    FailureKind,
    Finish,
    Send,
    Sleep,
    request_flow,
)
from proxyless_mesh.resilience import _counters as counters_module

ANSWERS = (
    AttemptResult(status=200),
    AttemptResult(status=503),
    AttemptResult(status=500),
    AttemptResult(failure=FailureKind.CONNECT_FAILURE),
    AttemptResult(failure=FailureKind.RESET),
)
requests = st.fixed_dictionaries(
    {
        "policy": st.none()
        | st.builds(
            RetryPolicy,
            retry_on=st.frozensets(
                st.sampled_from(["5xx", "gateway-error", "connect-failure", "reset"]), max_size=2
            ),
            num_retries=st.integers(0, 2),
            retry_other_hosts=st.booleans(),
        ),
        "timeout": st.sampled_from([None, None, 0.5]),
        "key": st.none() | st.integers(0, 2**64 - 1),
    }
)
cases = st.fixed_dictionaries(
    {
        "policy": st.sampled_from(list(LbPolicy)),
        "weights": st.lists(st.sampled_from([1, 1, 1, 3]), min_size=1, max_size=4),
        "limits": st.builds(
            CircuitBreakers,
            max_requests=st.integers(1, 3),
            max_pending_requests=st.integers(0, 2),
            max_retries=st.integers(0, 2),
        ),
        "outlier": st.none()
        | st.builds(
            OutlierDetection,
            consecutive_5xx=st.integers(1, 2),
            max_ejection_percent=st.sampled_from([50, 100]),
        ),
        "seed": st.integers(0, 2**32),
        "requests": st.lists(requests, min_size=1, max_size=4),
        "schedule": st.lists(
            st.tuples(st.integers(0, 3), st.integers(0, 4)), min_size=4, max_size=30
        ),
    }
)


def _run(case: dict[str, Any]) -> tuple[list[Any], tuple[type, type]]:
    """The trace, and which counters and picker built it."""
    now = [100.0]

    def clock() -> float:
        return now[0]

    endpoints = tuple(Endpoint(f"10.0.0.{i}", 80, w) for i, w in enumerate(case["weights"]))
    cluster = Cluster(
        "c",
        "c",
        lb_policy=case["policy"],
        ring_hash=RingHashConfig(minimum_ring_size=16),
        maglev=MaglevConfig(table_size=31),
        outlier_detection=case["outlier"],
        circuit_breakers=case["limits"],
    )
    assignment = ClusterLoadAssignment("c", (LocalityEndpoints(Locality(), endpoints),))
    balancer = ClusterBalancer(cluster, assignment, clock=clock, rng=random.Random(case["seed"]))
    resources = ClusterResources("c", case["limits"])
    rng = random.Random(case["seed"] + 1)
    flows = []
    for spec in case["requests"]:

        def pick(exclude: Any, key: int | None = spec["key"]) -> Endpoint | None:
            return balancer.pick(key, exclude)

        flow = request_flow(
            route_name="r", cluster="c", policy=spec["policy"], route_timeout=spec["timeout"],
            pick=pick, resources=resources, clock=clock, rng=rng, replayable=True,
        )  # fmt: skip
        flows.append({"flow": flow, "command": None, "started": False, "done": False})
    trace: list[Any] = []

    def advance(state: dict[str, Any], reply: AttemptResult | None) -> None:
        try:
            command = state["flow"].send(reply)
        except StopIteration as stop:
            finish: Finish = stop.value
            state["done"] = True
            trace.append(("finish", finish))
            return
        state["command"] = command
        if type(command) is Send:
            balancer.on_start(command.endpoint)
            trace.append(("send", command.endpoint, command.attempt, command.timeout))
        else:
            trace.append(("wait", type(command).__name__))

    for index, answer in case["schedule"]:
        state = flows[index % len(flows)]
        if state["done"]:
            continue
        command = state["command"]
        if not state["started"]:
            state["started"] = True
            advance(state, None)
        elif type(command) is Send:
            result = ANSWERS[answer]
            if result.status is None:
                outcome = Outcome.LOCAL_ORIGIN_FAILURE
            else:
                outcome = Outcome.of_status(result.status)
            balancer.on_finish(command.endpoint, outcome)
            now[0] += 0.01 * (answer + 1)
            advance(state, result)
        elif type(command) is Sleep:
            now[0] += command.seconds
            advance(state, None)
        elif command.ticket.granted or now[0] > 1e9:
            advance(state, None)
        else:
            now[0] += 0.2  # a wait: time passes (a route timeout may end it)
            advance(state, None)
        trace.append(
            (
                resources.counts(),
                tuple(balancer.in_flight(e) for e in endpoints),
                tuple(balancer.is_ejected(e) for e in endpoints),
            )
        )
    for state in flows:
        state["flow"].close()
    trace.append(("closed", resources.counts()))
    picker = getattr(balancer._current.pick, "__self__", None)
    return trace, (type(resources._counters), type(picker))


@settings(max_examples=200)  # ~1 s: cheap, and ties in least request need many
@given(cases)
def test_the_native_decision_traces_the_python_one(case: dict[str, Any]) -> None:
    native, built_native = _run(case)
    with (
        mock.patch.object(counters_module, "native_counters", limits_oracle.ClusterCounters),
        mock.patch.object(pickers, "flat_picker_class", pickers_oracle.FlatPicker),
        mock.patch.object(pickers, "hash_picker_class", pickers_oracle.HashPicker),
    ):
        python, built_python = _run(case)
    # Each world ran on its own parts (a picker of `_cluster`: no endpoint left).
    assert built_native[0].__module__ == "proxyless_mesh_native"
    assert built_python[0] is limits_oracle.ClusterCounters
    assert built_native[1].__module__ in ("proxyless_mesh_native", _cluster.__name__)
    assert built_python[1].__module__ in (pickers_oracle.__name__, _cluster.__name__)
    assert native == python
