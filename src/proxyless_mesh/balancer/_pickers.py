"""The per-policy pickers: immutable arrays built per active set, read per pick.

Every picker is built from the active set's groups (see _active.py) and has
one method, `pick(hash_key) -> Endpoint`, never called on an empty set.
Round robin, random and least request flatten the groups into one weighted
list (group load x weight within group), so priority and locality cost
nothing per pick. The hash pickers keep one ring / table per group, as
Envoy does per priority, and choose the group from the hash, so a key stays
on its endpoint while the groups' loads stay the same.
"""

from __future__ import annotations

import itertools
import math
import random
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from hashlib import blake2b

from proxyless_mesh.balancer._active import Group
from proxyless_mesh.balancer._hashing import hash64
from proxyless_mesh.balancer._native import flat_picker_class, hash_picker_class
from proxyless_mesh.balancer._outlier import HostState
from proxyless_mesh.balancer._schedule import smooth_schedule
from proxyless_mesh.model import Endpoint, MaglevConfig, RingHashConfig

_MASK64 = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant; decorrelates group choice from ring position


class Flat:
    """The groups flattened: every active endpoint once, with its share of all
    traffic, plus a weighted sampler over it."""

    __slots__ = (
        "_alias",
        "_n",
        "_prob",
        "_random",
        "endpoints",
        "states",
        "uniform",
        "weights",
    )

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
        self._n = len(endpoints)
        self._prob, self._alias = _alias_table(self.weights)
        self._random = rng.random

    def index(self) -> int:
        """A random index, weighted by share, in O(1) whatever the size:
        Walker's alias method, one random() for both the column and the coin."""
        u = self._random() * self._n
        i = int(u)
        if self.uniform or u - i < self._prob[i]:
            return i
        return self._alias[i]

    def sample(self, hash_key: int | None = None) -> Endpoint:
        return self.endpoints[self.index()]


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


class RoundRobinPicker:
    """Smooth weighted round robin over a schedule built here, advanced by a
    counter shared with the cluster's previous balancers (positions survive
    updates)."""

    __slots__ = ("_counter", "_n", "_schedule")

    def __init__(self, flat: Flat, counter: itertools.count[int]) -> None:
        if flat.uniform:
            self._schedule = flat.endpoints
        else:
            order = smooth_schedule(list(flat.weights))
            self._schedule = tuple(flat.endpoints[i] for i in order)
        self._n = len(self._schedule)
        self._counter = counter

    def pick(self, hash_key: int | None = None) -> Endpoint:
        return self._schedule[next(self._counter) % self._n]


class RandomPicker:
    __slots__ = ("pick",)

    def __init__(self, flat: Flat) -> None:
        self.pick = flat.sample


class LeastRequestPicker:
    """Power of two choices on in-flight requests (Envoy's default
    choice_count 2).

    Both candidates are drawn weighted by share, and the one with fewer
    in-flight requests per unit of weight wins (ties: the first). With no
    load this sends traffic exactly in proportion to the weights; under load
    it steers away from busy endpoints, a heavier endpoint being allowed
    proportionally more in flight. Envoy, for unequal weights, instead runs
    an EDF scheduler on weight / (active + 1)^bias; re-sorting a scheduler on
    every request costs too much in Python, and the P2C rule above keeps the
    same two properties (proportional when idle, load-aware when busy).
    With equal weights it is exactly Envoy's P2C."""

    __slots__ = ("_flat", "_states", "_weights")

    def __init__(self, flat: Flat) -> None:
        self._flat = flat
        self._states = flat.states
        self._weights = flat.weights

    def pick(self, hash_key: int | None = None) -> Endpoint:
        flat = self._flat
        i = flat.index()
        j = flat.index()
        states = self._states
        if flat.uniform:
            return flat.endpoints[i if len(states[i].flight) <= len(states[j].flight) else j]
        weights = self._weights
        if len(states[i].flight) * weights[j] <= len(states[j].flight) * weights[i]:
            return flat.endpoints[i]
        return flat.endpoints[j]


def flat_pick(
    policy: str, flat: Flat, counter: itertools.count[int]
) -> Callable[[int | None], Endpoint]:
    """The pick of a flat policy ("random", "least_request", "round_robin"):
    the native core's when built (the same picks), else the Python picker's."""
    schedule: tuple[Endpoint, ...] = ()
    python: RoundRobinPicker | LeastRequestPicker | RandomPicker
    if policy == "round_robin":
        python = round_robin = RoundRobinPicker(flat, counter)
        schedule = round_robin._schedule
    elif policy == "least_request":
        python = LeastRequestPicker(flat)
    else:
        python = RandomPicker(flat)
    if flat_picker_class is None:
        return python.pick
    native = flat_picker_class(
        policy, list(flat.endpoints), list(flat.weights), list(flat._prob), list(flat._alias),
        flat.uniform, [state.flight for state in flat.states], flat._random, list(schedule),
        counter,
    )  # fmt: skip
    return native.pick  # type: ignore[no-any-return]


class _HashPicker:
    """Shared by ring hash and Maglev: choose the group from the hash (only
    when there is more than one), then look the key up in its structure.
    Without a hash key the pick is random, as in Envoy."""

    __slots__ = ("_bounds", "_flat")

    def __init__(self, groups: tuple[Group, ...], flat: Flat) -> None:
        self._flat = flat
        self._bounds = tuple(itertools.accumulate(g.load for g in groups))

    def _group(self, hash_key: int) -> int:
        if len(self._bounds) == 1:
            return 0
        u = (((hash_key * _MIX) & _MASK64) >> 11) * (1.0 / (1 << 53)) * self._bounds[-1]
        return min(bisect_right(self._bounds, u), len(self._bounds) - 1)


class RingHashPicker(_HashPicker):
    """Envoy's ketama ring: each endpoint gets entries in proportion to its
    normalised weight, scaled so the lightest gets at least one and the ring
    has at least minimum_ring_size entries (at most maximum_ring_size).
    Entry k of an endpoint sits at hash64("address:port_k"); a key goes to
    the first entry at or after it, wrapping around."""

    __slots__ = ("_rings",)

    def __init__(self, groups: tuple[Group, ...], flat: Flat, config: RingHashConfig) -> None:
        super().__init__(groups, flat)
        self._rings = tuple(_build_ring(g, config) for g in groups)

    def pick(self, hash_key: int | None = None) -> Endpoint:
        if hash_key is None:
            return self._flat.sample()
        hashes, owners = self._rings[self._group(hash_key)]
        i = bisect_left(hashes, hash_key)
        return owners[i if i < len(hashes) else 0]


def hash_pick(picker: RingHashPicker | MaglevPicker) -> Callable[[int | None], Endpoint]:
    """The pick of a hash picker: the native core's when built (the same
    picks; a pick without a key is still the Python picker's)."""
    if hash_picker_class is None:
        return picker.pick
    if isinstance(picker, RingHashPicker):
        rings, tables, size = [(list(h), list(o)) for h, o in picker._rings], [], 0
    else:
        rings, tables, size = [], [list(t) for t in picker._tables], picker._size
    native = hash_picker_class(list(picker._bounds), rings, tables, size, picker.pick)
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

    __slots__ = ("_size", "_tables")

    def __init__(self, groups: tuple[Group, ...], flat: Flat, config: MaglevConfig) -> None:
        super().__init__(groups, flat)
        self._size = max(2, config.table_size)
        self._tables = tuple(_build_table(g, self._size) for g in groups)

    def pick(self, hash_key: int | None = None) -> Endpoint:
        if hash_key is None:
            return self._flat.sample()
        return self._tables[self._group(hash_key)][hash_key % self._size]


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
