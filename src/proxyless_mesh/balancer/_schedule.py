"""Smooth weighted round-robin schedules, computed once per update.

A schedule is one full cycle of endpoint indices; a pick is then one
`next()` on an itertools counter (atomic under the GIL, so no lock) and an
index into it. The order is stride scheduling with each endpoint's turns
centred in its period: endpoint i with integer weight q_i is due at
(k + phase_i) / q_i for k = 0..q_i-1, and the cycle is those turns sorted by
time. So an endpoint's turns are evenly spaced (no bursts: in any window of
the cycle it gets its proportional share to within about one turn), like
nginx's smooth WRR, but built in O(T log T) for a cycle of T turns instead
of O(n T), which matters at 10,000 endpoints. Each endpoint's turns are shifted by its
own phase (golden-ratio spaced), so light endpoints do not all fall on the
same instant and leave the heavy one a long run between them.
"""

from __future__ import annotations

import math
from fractions import Fraction

# A cycle is at most this long (or one turn per endpoint if there are more):
# float weights are scaled into integers summing to about this, so
# proportions are kept to within ~1/_MAX_CYCLE.
_MAX_CYCLE = 4096
_GOLDEN = 0.6180339887498949


def integer_weights(weights: list[float]) -> list[int]:
    """Positive integers proportional to `weights` (all > 0), reduced by their
    gcd. Weights arrive as floats (shares of traffic), so exact small ratios
    (0.5 : 0.3 : 0.2 from endpoint weights 5, 3, 2) are recovered first, which
    keeps cycles short and proportions exact. Otherwise they are scaled to
    about _MAX_CYCLE turns; every endpoint keeps at least one turn per cycle,
    so a tiny weight (an endpoint early in slow start among thousands) is
    slightly favoured rather than dropped."""
    if not weights:
        return []
    budget = max(_MAX_CYCLE, len(weights))
    scaled = _exact_ratios(weights, budget)
    if scaled is None:
        target = max(_MAX_CYCLE, 4 * len(weights))
        total = sum(weights)
        scaled = [max(1, round(w * target / total)) for w in weights]
    g = 0
    for q in scaled:
        g = math.gcd(g, q)
    return [q // g for q in scaled]


def _exact_ratios(weights: list[float], budget: int) -> list[int] | None:
    """Integers in the exact ratio of `weights` summing to at most `budget`,
    if the ratios are simple fractions (to float precision); else None."""
    smallest = min(weights)
    if sum(weights) / smallest > budget * (1 + 1e-9):
        return None  # the smallest integer solution already exceeds the budget
    ratios: list[Fraction] = []
    multiple = 1
    for w in weights:
        r = w / smallest
        f = Fraction(r).limit_denominator(64)
        if abs(float(f) - r) > 1e-9 * r:
            return None
        ratios.append(f)
        multiple = math.lcm(multiple, f.denominator)
        if multiple > budget:
            return None
    scaled = [int(f * multiple) for f in ratios]
    return scaled if sum(scaled) <= budget else None


def smooth_schedule(weights: list[float]) -> list[int]:
    """Indices into `weights` (all > 0) in smooth weighted order, one cycle."""
    counts = integer_weights(weights)
    if all(q == 1 for q in counts):
        return list(range(len(counts)))
    times: list[float] = []
    owners: list[int] = []
    for i, q in enumerate(counts):
        period = 1.0 / q
        phase = ((i + 1) * _GOLDEN) % 1.0
        for k in range(q):
            times.append((k + phase) * period)
            owners.append(i)
    order = sorted(range(len(times)), key=times.__getitem__)
    return [owners[j] for j in order]
