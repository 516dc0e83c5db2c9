"""The one tolerance rule for statistical checks.

A count of successes in `n` independent trials of probability `p` is
binomial: mean n*p, sigma sqrt(n*p*(1-p)). Every split, sampling or
fault-rate check accepts the band of SIGMAS sigmas around the mean. At 5
sigma a correct implementation fails about once in 1.7 million runs, while a
wrong rate fails as soon as it is more than 5 sigma off: to catch a smaller
error, a test raises n, never the number of sigmas."""

from __future__ import annotations

import math

SIGMAS = 5.0


def band(n: int, p: float, sigmas: float = SIGMAS) -> tuple[int, int]:
    """The accepted [lo, hi] count (inclusive) of successes in n trials at p."""
    mean = n * p
    half = sigmas * math.sqrt(n * p * (1 - p))
    return max(0, math.ceil(mean - half)), min(n, math.floor(mean + half))


def assert_binomial(count: int, n: int, p: float, what: str = "", sigmas: float = SIGMAS) -> None:
    """Fail unless `count` of `n` is within `sigmas` sigmas of n*p."""
    lo, hi = band(n, p, sigmas)
    assert lo <= count <= hi, (
        f"{what}: {count} of {n}, expected {n * p:g} at p={p:g}; "
        f"accepted [{lo}, {hi}] ({sigmas:g} sigma)"
    )
