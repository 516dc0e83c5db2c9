"""Resilience, sans I/O: retries, timeouts, circuit breaking, faults, mirroring.

`request_flow` is one request's life as a generator of commands (or, without
a fault or a timeout, a `FirstTry` that acts as one until a try is retried);
`drive` and `drive_async` run it for every integration (httpx and gRPC, sync
and async), which supply only what one try is. The flow takes its clock and RNG as
arguments and never sleeps; the drivers do the waiting.
"""

from proxyless_mesh.resilience._backoff import backoff_cap, wait_envoy_jittered
from proxyless_mesh.resilience._deadline import expected_timeout_ms, grpc_timeout_header
from proxyless_mesh.resilience._drive import AsyncAttempt, Attempt, drive, drive_async
from proxyless_mesh.resilience._flow import Flow, fault_draw, request_flow
from proxyless_mesh.resilience._limits import Admission, ClusterResources, SlotTicket
from proxyless_mesh.resilience._mirror import shadow_host, should_mirror
from proxyless_mesh.resilience._passthrough_breaker import PassthroughBreaker
from proxyless_mesh.resilience._retry_on import (
    GRPC_RETRY_CODES,
    KNOWN_CONDITIONS,
    RetryPredicate,
    compile_retry_on,
)
from proxyless_mesh.resilience._rewrite import (
    apply_header_mutation,
    redirect_location,
    rewrite_authority,
    rewrite_path,
)
from proxyless_mesh.resilience._types import (
    AttemptResult,
    Command,
    FailureKind,
    Finish,
    MeshFailure,
    Send,
    Sleep,
    WaitForSlot,
)

__all__ = [
    "GRPC_RETRY_CODES",
    "KNOWN_CONDITIONS",
    "Admission",
    "AsyncAttempt",
    "Attempt",
    "AttemptResult",
    "ClusterResources",
    "Command",
    "FailureKind",
    "Finish",
    "Flow",
    "MeshFailure",
    "PassthroughBreaker",
    "RetryPredicate",
    "Send",
    "Sleep",
    "SlotTicket",
    "WaitForSlot",
    "apply_header_mutation",
    "backoff_cap",
    "compile_retry_on",
    "drive",
    "drive_async",
    "expected_timeout_ms",
    "fault_draw",
    "grpc_timeout_header",
    "redirect_location",
    "request_flow",
    "rewrite_authority",
    "rewrite_path",
    "shadow_host",
    "should_mirror",
    "wait_envoy_jittered",
]
