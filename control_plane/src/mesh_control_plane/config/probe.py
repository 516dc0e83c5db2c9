"""A self-registered member's readiness probe, as a WorkloadGroup declares it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    """How the control plane checks a self-registered member is ready (a
    WorkloadGroup's `probe`: one of http, tcp, grpc, with Kubernetes' timing)."""

    kind: str  # "http" | "tcp" | "grpc"
    port: int
    path: str = "/"
    grpc_service: str = ""
    timeout: float = 1.0
    period: float = 10.0
    initial_delay: float = 0.0
    failure_threshold: int = 3
    success_threshold: int = 1
