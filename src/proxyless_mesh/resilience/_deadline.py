"""Deadline propagation headers: Envoy's for HTTP, gRPC's for gRPC.

A downstream service that knows how long its caller will wait can give up
early instead of doing work nobody will read.
"""

from __future__ import annotations

import math

# gRPC's units, coarsest first, in nanoseconds (PROTOCOL-HTTP2.md: Timeout).
_GRPC_UNITS = (
    ("H", 3600 * 10**9),
    ("M", 60 * 10**9),
    ("S", 10**9),
    ("m", 10**6),
    ("u", 10**3),
    ("n", 1),
)
_GRPC_MAX_DIGITS = 10**8  # TimeoutValue is at most 8 digits


def expected_timeout_ms(seconds: float) -> str:
    """`x-envoy-expected-rq-timeout-ms` for a try that may take `seconds`
    (whole milliseconds, rounded down so we never promise more, at least 1)."""
    return str(max(1, math.floor(seconds * 1000.0)))


def grpc_timeout_header(seconds: float) -> str:
    """The `grpc-timeout` value for `seconds`: the coarsest unit that states
    it exactly within gRPC's 8 digits, else the finest unit that fits, rounded
    up (a deadline rounded down could fire before the caller's own).
    E.g. 0.5 -> "500m", 2.0 -> "2S", 3600 -> "1H"."""
    if not math.isfinite(seconds):
        raise ValueError(f"grpc-timeout needs a finite duration, not {seconds!r}")
    nanos = max(1, round(seconds * 1e9))
    for unit, size in _GRPC_UNITS:
        value, rest = divmod(nanos, size)
        if rest == 0 and value < _GRPC_MAX_DIGITS:
            return f"{value}{unit}"
    for unit, size in reversed(_GRPC_UNITS):
        value = -(-nanos // size)
        if value < _GRPC_MAX_DIGITS:
            return f"{value}{unit}"
    return f"{_GRPC_MAX_DIGITS - 1}H"
