"""Differential test of the native pickers (issue 25): on generated groups
(equal and unequal weights, several groups), in-flight counts that change
between picks and seeds, the Rust `FlatPicker` and its Python reference
(tests/oracles/pickers.py) for random, least request and round robin, each
drawing from its own `random.Random` with the same seed and counting on its
own counter from the same start, pick the very same endpoint every time; so
do the native `HashPicker` and the reference for ring hash and Maglev on
generated keys."""

from __future__ import annotations

import itertools
import random
from typing import Any
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st
from oracles import pickers as oracle

from proxyless_mesh.balancer import _pickers as pickers
from proxyless_mesh.balancer._active import Group
from proxyless_mesh.balancer._native import flat_picker_class, hash_picker_class
from proxyless_mesh.balancer._outlier import HostState
from proxyless_mesh.balancer._pickers import (
    Flat,
    MaglevPicker,
    RingHashPicker,
    flat_pick,
    hash_pick,
)
from proxyless_mesh.model import Endpoint, MaglevConfig, RingHashConfig


def python_pickers() -> Any:
    """The reference pickers in place of the native ones (a context manager)."""
    return mock.patch.multiple(
        pickers, flat_picker_class=oracle.FlatPicker, hash_picker_class=oracle.HashPicker
    )


group_weights = st.lists(st.sampled_from([1.0, 1.0, 2.0, 3.0, 0.5, 100.0]), min_size=1, max_size=5)


groups_specs = st.lists(
    st.tuples(st.sampled_from([0.2, 0.5, 1.0]), group_weights), min_size=1, max_size=3
)


def _groups(groups_spec: list[tuple[float, list[float]]]) -> tuple[list[Group], list[HostState]]:
    groups = []
    states: list[HostState] = []
    for g, (share, weights) in enumerate(groups_spec):
        endpoints = tuple(Endpoint(f"10.{g}.0.{i}", 80) for i in range(len(weights)))
        group_states = tuple(HostState(0.0) for _ in weights)
        states.extend(group_states)
        groups.append(Group(share, endpoints, tuple(weights), group_states))
    return groups, states


@given(
    groups_specs,
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
    groups, states = _groups(groups_spec)
    python_flat = Flat(tuple(groups), random.Random(seed))
    native_flat = Flat(tuple(groups), random.Random(seed))
    python_counter, native_counter = itertools.count(start), itertools.count(start)
    with python_pickers():
        python = flat_pick(policy, python_flat, python_counter)
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


@given(
    groups_specs,
    st.sampled_from(["ring_hash", "maglev"]),
    st.sampled_from([1, 7, 64]),
    st.sampled_from([2, 13, 251]),
    st.integers(0, 2**32),
    st.lists(st.none() | st.integers(0, 2**64 - 1) | st.integers(0, 300), max_size=30),
)
def test_native_hash_picks_are_the_python_picks(
    groups_spec: list[tuple[float, list[float]]],
    policy: str,
    ring_size: int,
    table_size: int,
    seed: int,
    keys: list[int | None],
) -> None:
    groups, _ = _groups(groups_spec)

    def picker(flat: Flat) -> RingHashPicker | MaglevPicker:
        if policy == "ring_hash":
            config = RingHashConfig(minimum_ring_size=ring_size, maximum_ring_size=ring_size * 4)
            return RingHashPicker(tuple(groups), flat, config)
        return MaglevPicker(tuple(groups), flat, MaglevConfig(table_size=table_size))

    with python_pickers():
        python = hash_pick(picker(Flat(tuple(groups), random.Random(seed))))
    native = hash_pick(picker(Flat(tuple(groups), random.Random(seed))))
    assert native.__self__.__class__ is hash_picker_class  # type: ignore[attr-defined]
    for key in keys:  # None: a random pick from each one's own Random, same seed
        assert native(key) is python(key)
