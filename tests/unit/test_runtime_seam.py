"""The outbound integrations need only the runtime seam (issue 18): a
`Runtime` that is not a `Mesh` (no xDS client, no identity, no loop) drives
both httpx transports, routing and retrying through the snapshot it holds.
The upstream is httpx.MockTransport: what is tested is the seam, not I/O."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import httpx

from proxyless_mesh.integrations import AsyncMeshTransport, MeshTransport
from proxyless_mesh.model import (
    Cluster,
    ClusterLoadAssignment,
    Endpoint,
    Listener,
    Locality,
    LocalityEndpoints,
    MatchKind,
    PathMatcher,
    RetryPolicy,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
    WeightedCluster,
)
from proxyless_mesh.resilience import ClusterResources
from proxyless_mesh.runtime import ALLOW_ANY, MeshSnapshot, Runtime
from proxyless_mesh.snapshot import build_snapshot
from proxyless_mesh.telemetry import Telemetry, TelemetryConfig
from proxyless_mesh.xds_client import XdsState

AUTHORITY = "reviews.default.mesh:9080"
ENDPOINTS = (Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.2", 8080))


def _snapshot() -> MeshSnapshot:
    retry = RetryPolicy(retry_on=frozenset({"5xx"}), num_retries=1, retry_other_hosts=True)
    action = RouteAction(clusters=(WeightedCluster("reviews", 100),), retry_policy=retry)
    route = Route("default", RouteMatch(PathMatcher(MatchKind.PREFIX, "/")), action)
    routes = RouteConfiguration("r", (VirtualHost("v", (AUTHORITY,), (route,)),))
    assignment = ClusterLoadAssignment("reviews", (LocalityEndpoints(Locality(), ENDPOINTS),))
    state = XdsState(
        listeners=MappingProxyType({AUTHORITY: Listener(AUTHORITY, inline_routes=routes)}),
        clusters=MappingProxyType({"reviews": Cluster("reviews", "reviews")}),
        assignments=MappingProxyType({"reviews": assignment}),
    )
    return build_snapshot(state)


class _Inline:
    def submit(self, fn: Callable[..., Any], *args: Any) -> bool:
        fn(*args)
        return True


class FakeRuntime:
    """A Runtime with a fixed snapshot; resolving is never needed."""

    def __init__(self) -> None:
        self.snapshot = _snapshot()
        self.outbound_policy = ALLOW_ANY
        self.telemetry = Telemetry(TelemetryConfig.off())
        self.rng = random.Random(7)
        self.resolve_timeout = 1.0
        self.passthrough_breaker = None
        self.resources: dict[str, ClusterResources] = {}
        self.mirror_failures = 0

    @property
    def background(self) -> _Inline:
        return _Inline()

    @property
    def control_plane(self) -> str:
        return "none"

    @property
    def node_id(self) -> str:
        return "test-node"

    def clock(self) -> float:
        return time.monotonic()

    def cluster_resources(self, name: str, cluster: Cluster | None) -> ClusterResources:
        return self.resources.setdefault(name, ClusterResources(name))

    def resolve_blocking(self, authority: str) -> None:
        raise AssertionError(f"{authority} is in the snapshot")

    async def resolve_async(self, authority: str) -> None:
        raise AssertionError(f"{authority} is in the snapshot")

    def count_mirror_failure(self) -> None:
        self.mirror_failures += 1


def _upstream(seen: list[str]) -> httpx.MockTransport:
    """The first endpoint tried answers 503, any other 200."""

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.host}:{request.url.port}")
        return httpx.Response(503 if len(seen) == 1 else 200, text=request.url.host)

    return httpx.MockTransport(answer)


def test_a_runtime_that_is_not_a_mesh_drives_the_sync_transport() -> None:
    runtime: Runtime = FakeRuntime()
    seen: list[str] = []
    with httpx.Client(transport=MeshTransport(runtime, inner=_upstream(seen))) as client:
        response = client.get(f"http://{AUTHORITY}/reviews/1")
    assert response.status_code == 200
    assert len(seen) == 2 and seen[0] != seen[1]  # retried on the other endpoint
    assert set(seen) == {f"{e.address}:{e.port}" for e in ENDPOINTS}
    assert response.request.url.host == "reviews.default.mesh"  # restored for the caller


def test_a_runtime_that_is_not_a_mesh_drives_the_async_transport() -> None:
    runtime: Runtime = FakeRuntime()
    seen: list[str] = []

    async def call() -> httpx.Response:
        transport = AsyncMeshTransport(runtime, inner=_upstream(seen))
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.get(f"http://{AUTHORITY}/reviews/1")

    response = asyncio.run(call())
    assert response.status_code == 200
    assert len(seen) == 2 and seen[0] != seen[1]


def test_the_attempt_count_goes_on_the_wire_and_not_onto_the_callers_request() -> None:
    """Each try carries x-envoy-attempt-count (1, then 2 on the retry); a
    request answered by its first try gets the caller's headers back as they
    were (the header was appended for the try and taken back, as the peer
    headers are)."""
    counts: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        counts.append(request.headers.get("x-envoy-attempt-count"))
        return httpx.Response(503 if len(counts) == 1 else 200)

    runtime: Runtime = FakeRuntime()
    transport = MeshTransport(runtime, inner=httpx.MockTransport(answer))
    with httpx.Client(transport=transport) as client:
        retried = client.get(f"http://{AUTHORITY}/reviews/1", headers={"x-app": "1"})
        first = client.get(f"http://{AUTHORITY}/reviews/1", headers={"x-app": "1"})
    assert retried.status_code == first.status_code == 200
    assert counts == ["1", "2", "1"]
    assert "x-envoy-attempt-count" not in first.request.headers
    assert first.request.headers["x-app"] == "1"
