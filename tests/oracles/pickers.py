"""The native `FlatPicker` and `HashPicker` in plain Python, with the same
constructors: the reference the native picks are held to; not shipped. A
differential test builds one world with the native classes and one with these
(patched in at `proxyless_mesh.balancer._native`'s names) and demands the very
same endpoint at every pick."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from typing import Any

_MASK64 = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15  # decorrelates the group choice from the ring position


class FlatPicker:
    """Random by share (Walker's alias method, one `random()` for the column
    and the coin), least request (power of two choices, in-flight per unit of
    weight, ties to the first draw) and smooth weighted round robin."""

    def __init__(
        self,
        policy: str,
        endpoints: list[Any],
        weights: list[float],
        prob: list[float],
        alias: list[int],
        uniform: bool,
        flights: list[list[Any]],
        random: Callable[[], float],
        schedule: list[Any],
        counter: Iterator[int],
    ) -> None:
        self._policy, self._endpoints, self._weights = policy, endpoints, weights
        self._prob, self._alias, self._uniform = prob, alias, uniform
        self._flights, self._random = flights, random
        self._schedule, self._counter = schedule, counter

    def _index(self) -> int:
        u = self._random() * len(self._endpoints)
        i = int(u)
        if self._uniform or u - i < self._prob[i]:
            return i
        return self._alias[i]

    def pick(self, hash_key: int | None = None) -> Any:
        if self._policy == "round_robin":
            return self._schedule[next(self._counter) % len(self._schedule)]
        if self._policy == "random":
            return self._endpoints[self._index()]
        i, j = self._index(), self._index()
        flights = self._flights
        if self._uniform:
            return self._endpoints[i if len(flights[i]) <= len(flights[j]) else j]
        if len(flights[i]) * self._weights[j] <= len(flights[j]) * self._weights[i]:
            return self._endpoints[i]
        return self._endpoints[j]


class HashPicker:
    """The group from the hash (cumulative loads `bounds`), then the ring
    (first entry at or after the key, wrapping) or the Maglev table
    (key mod size); without a key, `keyless`."""

    def __init__(
        self,
        bounds: list[float],
        rings: list[tuple[list[int], list[Any]]],
        tables: list[list[Any]],
        size: int,
        keyless: Callable[[int | None], Any],
    ) -> None:
        self._bounds, self._rings, self._tables = bounds, rings, tables
        self._size, self._keyless = size, keyless

    def _group(self, key: int) -> int:
        if len(self._bounds) == 1:
            return 0
        u = (((key * _MIX) & _MASK64) >> 11) * (1.0 / (1 << 53)) * self._bounds[-1]
        return min(bisect_right(self._bounds, u), len(self._bounds) - 1)

    def pick(self, hash_key: int | None = None) -> Any:
        if hash_key is None or not 0 <= hash_key <= _MASK64:
            return self._keyless(hash_key)
        group = self._group(hash_key)
        if self._rings:
            hashes, owners = self._rings[group]
            i = bisect_left(hashes, hash_key)
            return owners[i if i < len(hashes) else 0]
        return self._tables[group][hash_key % self._size]
