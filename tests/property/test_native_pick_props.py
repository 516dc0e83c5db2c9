"""Differential test of the native flat picker (issue 25): on generated
groups (equal and unequal weights, several groups), in-flight counts that
change between picks and seeds, the Rust `FlatPicker` and the Python
random, least-request and round-robin pickers, each drawing from its own
`random.Random` with the same seed and counting on its own counter from the
same start, pick the very same endpoint every time."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyless_mesh.balancer._active import Group
from proxyless_mesh.balancer._native import flat_picker_class
from proxyless_mesh.balancer._outlier import HostState
from proxyless_mesh.balancer._pickers import (
    Flat,
    LeastRequestPicker,
    RandomPicker,
    RoundRobinPicker,
    flat_pick,
)
from proxyless_mesh.model import Endpoint

pytestmark = pytest.mark.skipif(flat_picker_class is None, reason="native core not built (no Rust)")

group_weights = st.lists(st.sampled_from([1.0, 1.0, 2.0, 3.0, 0.5, 100.0]), min_size=1, max_size=5)


@given(
    st.lists(st.tuples(st.sampled_from([0.2, 0.5, 1.0]), group_weights), min_size=1, max_size=3),
    st.sampled_from(["random", "least_request", "round_robin"]),
    st.integers(0, 2**32),
    st.integers(0, 2**16),
    st.lists(st.tuples(st.integers(0, 20), st.booleans()), max_size=40),
)
def test_native_flat_picks_are_the_python_picks(
    groups_spec: list[tuple[float, list[float]]],
    policy: str,
    seed: int,
    start: int,
    load: list[tuple[int, bool]],
) -> None:
    groups = []
    states: list[HostState] = []
    for g, (share, weights) in enumerate(groups_spec):
        endpoints = tuple(Endpoint(f"10.{g}.0.{i}", 80) for i in range(len(weights)))
        group_states = tuple(HostState(0.0) for _ in weights)
        states.extend(group_states)
        groups.append(Group(share, endpoints, tuple(weights), group_states))
    python_flat = Flat(tuple(groups), random.Random(seed))
    native_flat = Flat(tuple(groups), random.Random(seed))
    python_counter, native_counter = itertools.count(start), itertools.count(start)
    python = {
        "random": lambda: RandomPicker(python_flat),
        "least_request": lambda: LeastRequestPicker(python_flat),
        "round_robin": lambda: RoundRobinPicker(python_flat, python_counter),
    }[policy]().pick
    native = flat_pick(policy, native_flat, native_counter)
    assert native.__self__.__class__ is flat_picker_class  # type: ignore[attr-defined]
    for host, starts in load:  # change in-flight counts between picks
        state = states[host % len(states)]
        if starts:
            state.flight.append(None)
        else:
            del state.flight[-1:]
        assert native(None) is python(None)
    for _ in range(20):
        assert native(None) is python(None)
