"""Smooth weighted round robin over an immutable endpoint list.

The schedule is computed once per update with the "smooth" algorithm nginx
uses (each step every endpoint gains its weight, the leader is picked and
loses the total), so an endpoint of weight 5 among weights 1 is spread out
rather than hit five times in a row. A pick is then one `next()` on an
itertools counter (atomic under the GIL, so no lock) and an index.
"""

from __future__ import annotations

import itertools
import math
import random

from proxyless_mesh.model import Endpoint

# Longest schedule kept; larger weight sums are scaled down to fit, which
# keeps proportions to within 1/_MAX_SCHEDULE of the configured ones.
_MAX_SCHEDULE = 4096


def smooth_schedule(weights: list[int]) -> list[int]:
    """Indices into `weights` in smooth weighted round-robin order, one full
    cycle long (sum of the weights after dividing by their gcd)."""
    if not weights:
        return []
    g = 0
    for w in weights:
        g = math.gcd(g, w)
    scaled = [w // g for w in weights]
    total = sum(scaled)
    if total > _MAX_SCHEDULE:
        factor = _MAX_SCHEDULE / total
        scaled = [max(1, round(w * factor)) for w in scaled]
        total = sum(scaled)
    current = [0] * len(scaled)
    order: list[int] = []
    for _ in range(total):
        for i, w in enumerate(scaled):
            current[i] += w
        leader = max(range(len(current)), key=current.__getitem__)
        current[leader] -= total
        order.append(leader)
    return order


class RoundRobinPicker:
    """Picks endpoints in smooth weighted round-robin order."""

    __slots__ = ("_counter", "_length", "_schedule", "endpoints")

    def __init__(self, endpoints: tuple[Endpoint, ...]) -> None:
        self.endpoints = endpoints
        order = smooth_schedule([max(1, e.weight) for e in endpoints])
        self._schedule = tuple(endpoints[i] for i in order)
        self._length = len(self._schedule)
        # Start at a random place so many clients don't all begin on endpoint 0.
        self._counter = itertools.count(random.randrange(self._length) if self._length else 0)

    def pick(self) -> Endpoint | None:
        if not self._length:
            return None
        return self._schedule[next(self._counter) % self._length]
