"""Retries, timeouts, circuit breaking, faults and mirroring through the mesh
transports, against real backends that fail on purpose (issue 4)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from meshlab import LocalMesh, Proc, service_entry
from stats import assert_binomial

from proxyless_mesh import Mesh
from proxyless_mesh.errors import UpstreamOverflowError, UpstreamTimeoutError

HOST = "flaky.default.mesh"
URL = f"http://{HOST}:8080/"


def virtual_service(http: dict[str, Any], host: str = HOST) -> str:
    route = {"route": [{"destination": {"host": host}}], **http}
    return json.dumps(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": host.split(".")[0], "namespace": "default"},
            "spec": {"hosts": [host], "http": [route]},
        }
    )


def destination_rule(traffic_policy: dict[str, Any], host: str = HOST) -> str:
    return json.dumps(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": host.split(".")[0], "namespace": "default"},
            "spec": {"host": host, "trafficPolicy": traffic_policy},
        }
    )


def declare(lab: LocalMesh, *backends: Proc | int, host: str = HOST) -> None:
    """A ServiceEntry whose endpoints are these backends (or bare ports)."""
    ports = [b if isinstance(b, int) else b.ready["port"] for b in backends]
    lab.write_config(
        f"{host.split('.')[0]}.yaml",
        service_entry(host, 8080, [("127.0.0.1", p, {}) for p in ports]),
    )


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def served(backend: Proc) -> int:
    stats = httpx.get(f"http://127.0.0.1:{backend.ready['port']}/__stats").json()
    return int(stats["requests"])


def outcomes(client: httpx.Client, n: int) -> Counter[int]:
    return Counter(client.get(URL).status_code for _ in range(n))


def test_5xx_reach_the_caller_unless_the_route_retries_them(lab: LocalMesh) -> None:
    # One endpoint fails 30% of requests with 500 (not retried by Istio's
    # default policy), the other is healthy.
    flaky = lab.start_http_backend("flaky", "v1", "--fail-rate", "0.3", "--fail-status", "500")
    healthy = lab.start_http_backend("flaky", "v2")
    declare(lab, flaky, healthy)
    lab.start_control_plane()
    with Mesh.from_bootstrap(lab.bootstrap("c")) as mesh:
        client = httpx.Client(transport=mesh.httpx_transport())
        without = outcomes(client, 300)
        # Half the requests reach the flaky endpoint, 30% of those fail:
        # about 45 of 300 (sigma ~6.3); more than 10 is certain in practice.
        assert without[500] > 10, without
        lab.write_config(
            "route.yaml", virtual_service({"retries": {"attempts": 3, "retryOn": "5xx"}})
        )
        wait_for_retry_policy(mesh)
        with_retries = outcomes(client, 300)
    # A retry goes to the other endpoint, which never fails.
    assert with_retries == {200: 300}, with_retries


def wait_for_retry_policy(mesh: Mesh) -> None:
    deadline = time.monotonic() + 10
    while True:
        table = mesh.snapshot.routes.get(f"{HOST}:8080")
        route = table.routes[0] if table and table.routes else None
        decision = route.choices[0] if route is not None else None
        policy = (
            decision.route.action.retry_policy
            if decision and decision.route and decision.route.action
            else None
        )
        if policy is not None and "5xx" in policy.retry_on:
            return
        assert time.monotonic() < deadline, "the retry policy never arrived"
        time.sleep(0.02)


def test_connect_failure_is_retried_on_another_endpoint(lab: LocalMesh) -> None:
    healthy = lab.start_http_backend("flaky", "v1")
    declare(lab, closed_port(), healthy)  # Istio's default policy retries connect-failure
    lab.start_control_plane()
    with Mesh.from_bootstrap(lab.bootstrap("c")) as mesh:
        client = httpx.Client(transport=mesh.httpx_transport())
        assert outcomes(client, 100) == {200: 100}
    assert served(healthy) == 100


def test_route_timeout_bounds_the_call(lab: LocalMesh) -> None:
    slow = lab.start_http_backend("flaky", "v1", "--delay", "2")
    declare(lab, slow)
    lab.write_config("route.yaml", virtual_service({"timeout": "0.5s"}))
    lab.start_control_plane()
    with Mesh.from_bootstrap(lab.bootstrap("c"), preload=[f"{HOST}:8080"]) as mesh:
        client = httpx.Client(transport=mesh.httpx_transport())
        start = time.monotonic()
        with pytest.raises(UpstreamTimeoutError, match=r"0\.5") as info:
            client.get(URL)
        took = time.monotonic() - start
    assert isinstance(info.value, httpx.TimeoutException)
    assert info.value.response_flag == "UT"
    assert 0.45 <= took < 0.9, took


async def test_per_try_timeout_moves_on_to_a_fast_endpoint(lab: LocalMesh) -> None:
    slow = lab.start_http_backend("flaky", "v1", "--delay", "2")
    fast = lab.start_http_backend("flaky", "v2")
    declare(lab, slow, fast)
    lab.write_config(
        "route.yaml",
        virtual_service(
            {"timeout": "3s", "retries": {"attempts": 2, "perTryTimeout": "0.3s", "retryOn": "5xx"}}
        ),
    )
    lab.start_control_plane()
    async with Mesh.from_bootstrap(lab.bootstrap("c"), preload=[f"{HOST}:8080"]) as mesh:
        client = httpx.AsyncClient(transport=mesh.async_httpx_transport())
        for _ in range(10):
            start = time.monotonic()
            response = await client.get(URL)
            assert response.status_code == 200
            assert response.json()["version"] == "v2"
            # At worst one 0.3 s try on the slow endpoint, a backoff, then the fast one.
            assert time.monotonic() - start < 1.0
        await client.aclose()


async def test_limits_fail_fast_with_overflow(lab: LocalMesh) -> None:
    slow = lab.start_http_backend("flaky", "v1", "--delay", "1")
    declare(lab, slow)
    lab.write_config(
        "dr.yaml",
        destination_rule(
            {"connectionPool": {"http": {"http2MaxRequests": 2, "http1MaxPendingRequests": 1}}}
        ),
    )
    lab.start_control_plane()
    async with Mesh.from_bootstrap(lab.bootstrap("c"), preload=[f"{HOST}:8080"]) as mesh:
        client = httpx.AsyncClient(
            transport=mesh.async_httpx_transport(), timeout=httpx.Timeout(10)
        )

        async def call() -> tuple[str, float]:
            start = time.monotonic()
            try:
                await client.get(URL)
            except UpstreamOverflowError:
                return "overflow", time.monotonic() - start
            return "ok", time.monotonic() - start

        results = await asyncio.gather(*(call() for _ in range(8)))
        await client.aclose()
    kinds = Counter(kind for kind, _ in results)
    assert kinds == {"ok": 3, "overflow": 5}, results
    assert all(took < 0.05 for kind, took in results if kind == "overflow"), results


async def test_retry_budget_caps_attempts_during_an_outage(lab: LocalMesh) -> None:
    down = [lab.start_http_backend("flaky", f"v{i}", "--fail-rate", "1") for i in range(2)]
    declare(lab, *down)
    lab.write_config("route.yaml", virtual_service({"retries": {"attempts": 3, "retryOn": "5xx"}}))
    lab.start_control_plane()
    requests = 200
    async with Mesh.from_bootstrap(lab.bootstrap("c"), preload=[f"{HOST}:8080"]) as mesh:
        client = httpx.AsyncClient(transport=mesh.async_httpx_transport())
        wait_for_retry_policy(mesh)
        gate = asyncio.Semaphore(40)  # 40 requests in flight at a time

        async def call() -> int:
            async with gate:
                return (await client.get(URL)).status_code

        statuses = await asyncio.gather(*(call() for _ in range(requests)))
        await client.aclose()
    attempts = sum(served(b) for b in down)
    print(f"outage: {requests} requests -> {attempts} upstream attempts")
    assert set(statuses) == {503}
    # Without the budget this would be 4 attempts per request (800). The
    # default budget (20% of active requests, at least 3 retries in flight)
    # keeps it near 1.2x.
    assert attempts <= 1.2 * requests + 3 * 10, attempts


def test_fault_injection_follows_its_percentages(lab: LocalMesh) -> None:
    backend = lab.start_http_backend("flaky", "v1")
    declare(lab, backend)
    lab.write_config(
        "route.yaml",
        virtual_service(
            {
                "fault": {
                    "abort": {"httpStatus": 418, "percentage": {"value": 30}},
                    "delay": {"fixedDelay": "0.05s", "percentage": {"value": 20}},
                }
            }
        ),
    )
    lab.start_control_plane()
    n = 1000
    with Mesh.from_bootstrap(lab.bootstrap("c"), preload=[f"{HOST}:8080"]) as mesh:
        client = httpx.Client(transport=mesh.httpx_transport())
        delayed = 0
        statuses: Counter[int] = Counter()
        for _ in range(n):
            response = client.get(URL)
            statuses[response.status_code] += 1
            delayed += "DI" in response.extensions.get("mesh_response_flags", ())
    assert_binomial(statuses[418], n, 0.30, f"aborted at 30 % {statuses}")
    assert_binomial(delayed, n, 0.20, "delayed at 20 %")
    assert served(backend) == statuses[200]  # aborted requests never reached it


def test_mirror_gets_copies_and_never_slows_the_caller(lab: LocalMesh) -> None:
    primary = lab.start_http_backend("flaky", "v1")
    mirror = lab.start_http_backend("mirror", "v1", "--delay", "1")
    declare(lab, primary)
    declare(lab, mirror, host="mirror.default.mesh")
    lab.write_config(
        "route.yaml",
        virtual_service(
            {"mirror": {"host": "mirror.default.mesh"}, "mirrorPercentage": {"value": 100}}
        ),
    )
    lab.start_control_plane()
    with Mesh.from_bootstrap(
        lab.bootstrap("c"), preload=[f"{HOST}:8080", "mirror.default.mesh:8080"]
    ) as mesh:
        client = httpx.Client(transport=mesh.httpx_transport())
        for _ in range(20):
            start = time.monotonic()
            assert client.post(URL, content=b"payload").status_code == 200
            # The mirror takes 1 s per request; the caller must not wait for it.
            assert time.monotonic() - start < 0.5
        deadline = time.monotonic() + 10
        while served(mirror) < 20:
            assert time.monotonic() < deadline, served(mirror)
            time.sleep(0.05)
    stats = httpx.get(f"http://127.0.0.1:{mirror.ready['port']}/__stats").json()
    assert stats["hosts"] == {f"{HOST}-shadow:8080": 20}
    assert served(primary) == 20
