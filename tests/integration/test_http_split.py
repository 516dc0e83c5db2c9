"""The spine end to end: Istio YAML -> control plane -> xDS -> httpx in-process.

Every test runs a real control plane (`meshctl control-plane`) and real
uvicorn backends on 127.0.0.1, and a client using the mesh transports.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from meshlab import LocalMesh
from stats import assert_binomial

from proxyless_mesh import Mesh

HOST = "reviews.default.mesh"
URL = f"http://{HOST}:8080/reviews"
# 1,000 requests at 80/20: v2's count is checked at 5 sigma (tests/stats.py),
# 137-263, so 70/30 or 90/10 fails.
N = 1000


@pytest.fixture
def reviews(lab: LocalMesh) -> Iterator[tuple[LocalMesh, Path]]:
    v1 = lab.start_http_backend("reviews", "v1")
    v2 = lab.start_http_backend("reviews", "v2")
    lab.deploy_versions(HOST, 8080, {"v1": v1, "v2": v2}, {"v1": 80, "v2": 20})
    lab.start_control_plane()
    yield lab, lab.bootstrap("client-1")


def test_sync_transport_follows_80_20_split(reviews: tuple[LocalMesh, Path]) -> None:
    _, bootstrap = reviews
    with (
        Mesh.from_bootstrap(bootstrap) as mesh,
        httpx.Client(transport=mesh.httpx_transport()) as client,
    ):
        counts: Counter[str] = Counter()
        for _ in range(N):
            response = client.get(URL)
            assert response.status_code == 200
            counts[response.json()["version"]] += 1
        # The Host header still names the service, as through a sidecar.
        assert response.json()["host"] == f"{HOST}:8080"
        assert response.request.url == httpx.URL(URL)
    assert_binomial(counts["v2"], N, 0.20, f"v2 of the 80/20 split {counts}")


async def test_async_transport_follows_80_20_split(reviews: tuple[LocalMesh, Path]) -> None:
    _, bootstrap = reviews
    async with (
        Mesh.from_bootstrap(bootstrap) as mesh,
        httpx.AsyncClient(transport=mesh.async_httpx_transport()) as client,
    ):
        counts: Counter[str] = Counter()
        for _ in range(N):
            response = await client.get(URL)
            assert response.status_code == 200
            counts[response.json()["version"]] += 1
    assert_binomial(counts["v2"], N, 0.20, f"v2 of the 80/20 split {counts}")


def wait_until_all(client: httpx.Client, version: str, window: int, limit: float) -> float:
    """Seconds until `window` consecutive responses all come from `version`."""
    start = time.monotonic()
    streak = 0
    while streak < window:
        if time.monotonic() - start > limit:
            raise AssertionError(f"traffic did not move to {version} within {limit}s")
        streak = streak + 1 if client.get(URL).json()["version"] == version else 0
    return time.monotonic() - start


def test_changing_the_file_moves_traffic(reviews: tuple[LocalMesh, Path]) -> None:
    lab, bootstrap = reviews
    with (
        Mesh.from_bootstrap(bootstrap) as mesh,
        httpx.Client(transport=mesh.httpx_transport()) as client,
    ):
        client.get(URL)
        lab.set_weights(HOST, {"v1": 0, "v2": 100})
        took = wait_until_all(client, "v2", window=30, limit=10.0)
        print(f"file write -> full switch to v2: {took * 1000:.0f} ms")
        assert all(client.get(URL).json()["version"] == "v2" for _ in range(200))
