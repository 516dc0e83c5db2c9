"""The per-policy pickers: immutable arrays built here per active set, read
per pick by the native core (issue 25: `FlatPicker`, `HashPicker`; the rules
are stated where they are built and in native/src/pick.rs).

Every pick is `pick(hash_key) -> Endpoint`, never called on an empty set.
Round robin, random and least request flatten the groups into one weighted
list (group load x weight within group), so priority and locality cost
nothing per pick. The hash pickers keep one ring / table per group, as
Envoy does per priority, and choose the group from the hash, so a key stays
on its endpoint while the groups' loads stay the same.
tests/property/test_native_pick_props.py holds the native picks to a Python
reference (tests/oracles/pickers.py).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from hashlib import blake2b

from proxyless_mesh.balancer._active import Group
from proxyless_mesh.balancer._hashing import hash64
from proxyless_mesh.balancer._native import flat_picker_class, hash_picker_class
from proxyless_mesh.balancer._outlier import HostState
from proxyless_mesh.balancer._schedule import smooth_schedule
from proxyless_mesh.model import Endpoint, MaglevConfig, RingHashConfig


class Flat:
    """The groups flattened: every active endpoint once, with its share of all
    traffic, plus Walker's alias tables for sampling by share in O(1) (one
    `random()` for both the column and the coin, drawn by the native picker
    from this balancer's `random.Random`)."""

    __slots__ = ("alias", "endpoints", "prob", "random", "states", "uniform", "weights")

    def __init__(self, groups: tuple[Group, ...], rng: random.Random) -> None:
        endpoints: list[Endpoint] = []
        weights: list[float] = []
        states: list[HostState] = []
        for g in groups:
            total = sum(g.weights)
            endpoints.extend(g.endpoints)
            weights.extend(g.load * w / total for w in g.weights)
            states.extend(g.states)
        self.endpoints = tuple(endpoints)
        self.states = tuple(states)
        low, high = min(weights), max(weights)
        # Equal within float noise: uniform sampling is exact and cheaper.
        self.uniform = high - low <= 1e-9 * high
        self.weights = tuple(1.0 for _ in weights) if self.uniform else tuple(weights)
        self.prob, self.alias = _alias_table(self.weights)
        self.random = rng.random


def _alias_table(weights: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Vose's alias tables: column i is kept with probability prob[i], else
    it stands for alias[i]; each column carries 1/n of the total weight."""
    n = len(weights)
    total = sum(weights)
    scaled = [w * n / total for w in weights]
    prob = [1.0] * n
    alias = list(range(n))
    small = [i for i, p in enumerate(scaled) if p < 1.0]
    large = [i for i, p in enumerate(scaled) if p >= 1.0]
    while small and large:
        s, big = small.pop(), large.pop()
        prob[s] = scaled[s]
        alias[s] = big
        scaled[big] += scaled[s] - 1.0
        (small if scaled[big] < 1.0 else large).append(big)
    return tuple(prob), tuple(alias)


def flat_pick(
    policy: str, flat: Flat, counter: itertools.count[int]
) -> Callable[[int | None], Endpoint]:
    """The native pick of a flat policy:
    - "random": an endpoint by share (the alias tables);
    - "least_request": power of two choices on in-flight requests (Envoy's
      default choice_count 2), both drawn by share, the one with fewer
      in-flight requests per unit of weight winning (ties: the first). Idle,
      this sends traffic in proportion to the weights; busy, it steers away
      from loaded endpoints. With equal weights it is Envoy's P2C; for
      unequal ones Envoy runs an EDF scheduler on weight / (active + 1)^bias,
      and this rule keeps its two properties without re-sorting per request;
    - "round_robin": smooth weighted round robin over a schedule built here,
      advanced by a counter shared with the cluster's previous balancers
      (positions survive updates)."""
    schedule: tuple[Endpoint, ...] = ()
    if policy == "round_robin":
        if flat.uniform:
            schedule = flat.endpoints
        else:
            schedule = tuple(flat.endpoints[i] for i in smooth_schedule(list(flat.weights)))
    native = flat_picker_class(
        policy, list(flat.endpoints), list(flat.weights), list(flat.prob), list(flat.alias),
        flat.uniform, [state.flight for state in flat.states], flat.random, list(schedule),
        counter,
    )  # fmt: skip
    return native.pick  # type: ignore[no-any-return]


class _HashPicker:
    """Shared by ring hash and Maglev: the group is chosen from the hash (only
    when there is more than one; `bounds` are the groups' cumulative loads),
    then the key is looked up in its group's structure. Without a hash key
    the pick is random by share, as in Envoy."""

    __slots__ = ("bounds", "flat")

    def __init__(self, groups: tuple[Group, ...], flat: Flat) -> None:
        self.flat = flat
        self.bounds = tuple(itertools.accumulate(g.load for g in groups))


class RingHashPicker(_HashPicker):
    """Envoy's ketama ring: each endpoint gets entries in proportion to its
    normalised weight, scaled so the lightest gets at least one and the ring
    has at least minimum_ring_size entries (at most maximum_ring_size).
    Entry k of an endpoint sits at hash64("address:port_k"); a key goes to
    the first entry at or after it, wrapping around."""

    __slots__ = ("rings",)

    def __init__(self, groups: tuple[Group, ...], flat: Flat, config: RingHashConfig) -> None:
        super().__init__(groups, flat)
        self.rings = tuple(_build_ring(g, config) for g in groups)


def hash_pick(picker: RingHashPicker | MaglevPicker) -> Callable[[int | None], Endpoint]:
    """The native pick of a hash picker's structures; a pick without a key
    is the flat random pick's (`flat_pick("random", ...)`)."""
    if isinstance(picker, RingHashPicker):
        rings, tables, size = [(list(h), list(o)) for h, o in picker.rings], [], 0
    else:
        rings, tables, size = [], [list(t) for t in picker.tables], picker.size
    keyless = flat_pick("random", picker.flat, itertools.count())
    native = hash_picker_class(list(picker.bounds), rings, tables, size, keyless)
    return native.pick  # type: ignore[no-any-return]


def _build_ring(group: Group, config: RingHashConfig) -> tuple[list[int], list[Endpoint]]:
    total = sum(group.weights)
    normalised = [w / total for w in group.weights]
    smallest = min(normalised)
    low = max(1, config.minimum_ring_size)
    high = max(low, config.maximum_ring_size)
    scale = min(math.ceil(smallest * low) / smallest, high)
    entries: list[tuple[int, int]] = []
    current = 0.0
    target = 0
    for index, (endpoint, share) in enumerate(zip(group.endpoints, normalised, strict=True)):
        current += scale * share
        k = 0
        while target < current:
            entries.append((hash64(f"{endpoint.address}:{endpoint.port}_{k}"), index))
            k += 1
            target += 1
    entries.sort()
    return [h for h, _ in entries], [group.endpoints[i] for _, i in entries]


class MaglevPicker(_HashPicker):
    """Google's Maglev lookup table (weighted as in Envoy): each endpoint has
    a permutation of the table slots (offset, skip from the hash of
    "address:port"); in turns, each endpoint claims its next free slot, an
    endpoint of relative weight r taking a turn only every 1/r rounds. A key
    goes to table[key % table_size]. Removing an endpoint frees its slots
    and the others mostly keep theirs."""

    __slots__ = ("size", "tables")

    def __init__(self, groups: tuple[Group, ...], flat: Flat, config: MaglevConfig) -> None:
        super().__init__(groups, flat)
        self.size = max(2, config.table_size)
        self.tables = tuple(_build_table(g, self.size) for g in groups)


def _build_table(group: Group, size: int) -> list[Endpoint]:
    n = len(group.endpoints)
    heaviest = max(group.weights)
    relative = [w / heaviest for w in group.weights]
    position: list[int] = []
    skip: list[int] = []
    for endpoint in group.endpoints:
        digest = blake2b(f"{endpoint.address}:{endpoint.port}".encode(), digest_size=16).digest()
        position.append(int.from_bytes(digest[:8], "little") % size)
        skip.append(int.from_bytes(digest[8:], "little") % (size - 1) + 1)
    target = [0.0] * n
    owner = [-1] * size
    filled = 0
    rounds = 0
    while filled < size:
        for i in range(n):
            if rounds * relative[i] < target[i]:
                continue
            target[i] += 1.0
            slot = position[i]
            step = skip[i]
            while owner[slot] >= 0:
                slot = (slot + step) % size
            owner[slot] = i
            position[i] = (slot + step) % size
            filled += 1
            if filled == size:
                break
        rounds += 1
    endpoints = group.endpoints
    return [endpoints[i] for i in owner]
