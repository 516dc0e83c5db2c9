"""How a control plane process and its ADS gRPC server are tuned for
thousands of streams (figures in benchmarks/README.md)."""

from __future__ import annotations

import gc

__all__ = ["GC_THRESHOLDS", "SERVER_OPTIONS", "tune_gc"]

# A connect storm of thousands of clients arrives faster than one Python event
# loop accepts calls, and grpc core's defaults for calls the application has not
# picked up yet reset most of it (and every client retries, so the storm only
# grows): a call left waiting more than 30 s (server_max_unrequested_time_in_
# server) is CANCELLED, and beyond 1,000 waiting (max_pending_requests) new ones
# are refused with RESOURCE_EXHAUSTED, certainly so beyond 3,000 (the hard
# limit). A waiting call costs a few KB in core; 100,000 is a deliberate
# ceiling, not "unlimited". Values: count, count, seconds.
# BDP probing off: with it, grpc core answers every DATA frame a client sends
# (each ACK) with a PING of its own to size the receive window, so every push
# cost each stream a ping and its ack besides the response and the ACK (strace
# at 2,000 streams: recvmsg per stream per push 4.0 -> 2.0, control plane CPU
# per push -15 %). Clients send small requests: the fixed 64 KB window is enough.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.server.max_pending_requests", 100_000),
    ("grpc.server.max_pending_requests_hard_limit", 100_000),
    ("grpc.server_max_unrequested_time_in_server", 300),
    ("grpc.http2.bdp_probe", 0),
)

GC_THRESHOLDS = (50_000, 20, 10)
"""Collector thresholds for a control plane process (see `tune_gc`)."""


def tune_gc() -> None:
    """Run the cyclic collector less often (the control plane's entry point
    only): a push's short-lived objects per stream otherwise trigger collections
    that walk every stream's long-lived state (figures in benchmarks/README)."""
    gc.set_threshold(*GC_THRESHOLDS)
