"""`Runtime`: the one thing the integrations know about a running mesh.

A Protocol, not a class: `Mesh` (the composition root) implements it, and
so can a test double, `meshctl simulate` or a native core later. The outbound
integrations take a `Runtime` and never import `Mesh`, so they see the
current snapshot, the cluster counters, resolution, telemetry, clock and rng,
and background work, and nothing of the xDS client, identity or lifecycle.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol

from proxyless_mesh.model import Cluster
from proxyless_mesh.resilience import ClusterResources, PassthroughBreaker
from proxyless_mesh.runtime._snapshot import MeshSnapshot
from proxyless_mesh.telemetry import Telemetry


class BackgroundWork(Protocol):
    """Fire-and-forget work off the request path (mirrors, reports)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run `fn(*args)` later; False when the queue is full (work dropped)."""
        ...


class Runtime(Protocol):
    """What a request needs from the mesh (see the module docstring)."""

    # The current snapshot: replaced whole on each update, read without a lock.
    snapshot: MeshSnapshot
    # ALLOW_ANY or REGISTRY_ONLY: what happens to hosts outside the mesh.
    outbound_policy: str
    telemetry: Telemetry
    rng: random.Random
    # How long resolving an unknown authority may take (seconds).
    resolve_timeout: float
    # The circuit breakers of passed-through hosts (None: not guarded).
    passthrough_breaker: PassthroughBreaker | None

    @property
    def background(self) -> BackgroundWork:
        """Where mirrors and other fire-and-forget work run."""
        ...

    @property
    def control_plane(self) -> str:
        """The control plane's address, for error messages."""
        ...

    @property
    def node_id(self) -> str:
        """This process's xDS node id (the "downstream" of hash policies)."""
        ...

    def clock(self) -> float:
        """Monotonic seconds: what deadlines and timeouts are measured by."""
        ...

    def cluster_resources(self, name: str, cluster: Cluster | None) -> ClusterResources:
        """The process-wide limits and counters of one cluster."""
        ...

    def resolve_blocking(self, authority: str) -> None:
        """Block until the control plane said what `authority` is."""
        ...

    async def resolve_async(self, authority: str) -> None:
        """`resolve_blocking` for asyncio."""
        ...

    def count_mirror_failure(self) -> None:
        """A mirrored copy failed or was dropped."""
        ...
