"""grpcio's own xDS client behaves by the resilience policy our control plane
emits: retries (gRFC A44), route timeouts (A31), fault injection (A33) and
circuit breaking on max_requests (A32). Real gRPC backends, the real control
plane, and grpcio's `xds:///` channel in a process of its own per scenario.

One mesh serves every scenario, each under a host of its own, to keep the file
fast: three backends (healthy, flaky, slow) behind six hosts. Backend counters
are read as deltas around each scenario, so scenarios stay independent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from meshlab import HERE, LocalMesh, Proc, start_process
from stats import assert_binomial

pytestmark = pytest.mark.interop

PORT = 50051
CLIENT = Path(__file__).with_name("grpc_resilience_client.py")

SLOW_SECONDS = 2.0
ROUTE_TIMEOUT = 0.5
# The deadline starts when grpcio applies the route, a little after our clock
# starts; 0.3 s over covers a loaded 2-core machine and is far below the 2 s
# the backend would take.
TIMEOUT_MARGIN = 0.3
DELAY = 0.2
ABORT_CALLS = 400
# 400 calls at 50 %: UNAVAILABLE's count is checked at 5 sigma (tests/stats.py).
MAX_REQUESTS = 2
CONCURRENT = 6
FAIL_FAST = 0.25  # a dropped call fails in milliseconds; a slow one takes 2 s

RETRY_ON = "retry-on.default.mesh"
RETRY_OFF = "retry-off.default.mesh"
TIMEOUT = "timeout.default.mesh"
ABORT = "abort.default.mesh"
DELAYED = "delay.default.mesh"
LIMITED = "limited.default.mesh"


def entry(host: str, backends: list[Proc]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": host.split(".")[0]},
        "spec": {
            "location": "MESH_INTERNAL",
            "hosts": [host],
            "ports": [{"number": PORT, "name": "grpc", "protocol": "GRPC"}],
            "resolution": "STATIC",
            "endpoints": [
                {"address": "127.0.0.1", "ports": {"grpc": b.ready["port"]}} for b in backends
            ],
        },
    }


def route(host: str, **http: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": host.split(".")[0]},
        "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}}], **http}]},
    }


def pool(host: str, http: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": host.split(".")[0]},
        "spec": {"host": host, "trafficPolicy": {"connectionPool": {"http": http}}},
    }


class Mesh:
    """The shared mesh: backends by role, and a bootstrap for grpcio."""

    def __init__(self, lab: LocalMesh) -> None:
        self.lab = lab
        self.healthy = self._backend("v1")
        self.flaky = self._backend("flaky", "--fail-rate", "0.5", "--fail-code", "UNAVAILABLE")
        self.slow = self._backend("slow", "--delay", str(SLOW_SECONDS))
        both = [self.healthy, self.flaky]
        docs = [
            entry(RETRY_ON, both),
            route(RETRY_ON, retries={"attempts": 3, "retryOn": "unavailable"}),
            entry(RETRY_OFF, both),
            route(RETRY_OFF, retries={"attempts": 3, "retryOn": "cancelled"}),
            entry(TIMEOUT, [self.slow]),
            route(TIMEOUT, timeout=f"{ROUTE_TIMEOUT}s"),
            entry(ABORT, [self.healthy]),
            route(
                ABORT,
                fault={"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 50}}},
            ),
            entry(DELAYED, [self.healthy]),
            route(
                DELAYED,
                fault={"delay": {"fixedDelay": f"{DELAY}s", "percentage": {"value": 100}}},
            ),
            entry(LIMITED, [self.slow]),
            route(LIMITED),
            pool(LIMITED, {"http2MaxRequests": MAX_REQUESTS}),
        ]
        lab.write_config("resilience.yaml", "\n---\n".join(json.dumps(d) for d in docs))
        lab.start_control_plane()
        self.bootstrap = lab.bootstrap("grpc-resilience")

    def _backend(self, version: str, *flags: str) -> Proc:
        """meshlab's start_grpc_backend takes no flags: start it the same way."""
        proc = start_process(
            f"greeter-{version}",
            [
                sys.executable,
                str(HERE / "grpc_backend.py"),
                "--service",
                "greeter",
                "--version",
                version,
                *flags,
            ],
            self.lab.workdir,
        )
        self.lab.procs.append(proc)
        return proc

    def call(self, host: str, calls: int, *flags: str) -> list[dict[str, Any]]:
        """Run the grpcio xDS client against host; its per-call results."""
        done = subprocess.run(
            [sys.executable, str(CLIENT), f"xds:///{host}:{PORT}", "--calls", str(calls), *flags],
            env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(self.bootstrap)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"client failed ({done.returncode}):\n{done.stderr}")
        results: list[dict[str, Any]] = json.loads(done.stdout)["results"]
        return results


def stats(backend: Proc) -> Counter[str]:
    """The backend's own counters, asked directly (no mesh in between)."""
    with grpc.insecure_channel(f"127.0.0.1:{backend.ready['port']}") as channel:
        raw = channel.unary_unary(
            "/greeter.Greeter/Stats", request_serializer=None, response_deserializer=None
        )(b"", timeout=5)
    return Counter(json.loads(raw))


def codes(results: list[dict[str, Any]]) -> Counter[str]:
    return Counter(r["code"] for r in results)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    lab = LocalMesh(tmp_path_factory.mktemp("grpc-resilience"))
    try:
        yield Mesh(lab)
    finally:
        lab.close()


def test_retry_on_unavailable_hides_the_flaky_backend(mesh: Mesh) -> None:
    before = stats(mesh.flaky), stats(mesh.healthy)
    results = mesh.call(RETRY_ON, 100)
    flaky, healthy = stats(mesh.flaky) - before[0], stats(mesh.healthy) - before[1]
    assert codes(results) == {"OK": 100}, codes(results)
    # Not vacuous: the flaky backend did fail calls, and each failure was retried
    # exactly once (every call ended OK): the backends saw as many attempts
    # carrying grpc-previous-rpc-attempts as there were failures.
    assert flaky["failed"] >= 10, flaky
    assert healthy["retried"] + flaky["retried"] == flaky["failed"], (flaky, healthy)


def test_retry_on_other_codes_lets_unavailable_through(mesh: Mesh) -> None:
    before = stats(mesh.flaky)
    results = mesh.call(RETRY_OFF, 100)
    flaky = stats(mesh.flaky) - before
    failures = codes(results)["UNAVAILABLE"]
    assert failures >= 10, codes(results)
    # Every failure the backend produced reached the caller: none was retried.
    assert failures == flaky["failed"], (codes(results), flaky)
    assert flaky["retried"] == 0, flaky


def test_route_timeout_cuts_the_call(mesh: Mesh) -> None:
    """The route timeout (max_stream_duration, A31) bounds the call: it fails with
    DEADLINE_EXCEEDED long before the caller's own 10 s deadline or the backend's
    2 s answer. How early it may fire is the next test's business."""
    results = mesh.call(TIMEOUT, 3, "--deadline", "10")
    assert codes(results) == {"DEADLINE_EXCEEDED": 3}, results
    assert all(r["seconds"] < ROUTE_TIMEOUT + TIMEOUT_MARGIN for r in results), results


@pytest.mark.xfail(
    strict=True,
    reason=(
        "grpcio (Python, 1.85) applies a service-config/xDS method timeout about 1-1.8 s "
        "short (grpc/grpc#34547): with max_stream_duration 0.5s every call fails at once "
        "(~0.5 ms); plain grpc.service_config timeouts show the same offset without xDS"
    ),
)
def test_route_timeout_does_not_fire_early(mesh: Mesh) -> None:
    results = mesh.call(TIMEOUT, 3, "--deadline", "10")
    assert codes(results) == {"DEADLINE_EXCEEDED": 3}, results
    assert all(r["seconds"] >= ROUTE_TIMEOUT for r in results), results


def test_fault_abort_fails_about_half_with_the_status(mesh: Mesh) -> None:
    """Istio's default retry policy (it retries `unavailable`) is on this route:
    injected aborts are not retried (A33 faults sit above retries, as Envoy's
    fault filter sits before its router), or the share would be ~1/8."""
    before = stats(mesh.healthy)
    results = mesh.call(ABORT, ABORT_CALLS)
    healthy = stats(mesh.healthy) - before
    seen = codes(results)
    assert set(seen) == {"OK", "UNAVAILABLE"}, seen
    assert_binomial(seen["UNAVAILABLE"], ABORT_CALLS, 0.5, f"aborted at 50 % {seen}")
    # Aborted in the client: the backend only saw the calls that succeeded.
    assert healthy["calls"] == seen["OK"], (seen, healthy)


def test_fault_delay_holds_every_call(mesh: Mesh) -> None:
    # The backend answers in about a millisecond: the time is the injected delay.
    results = mesh.call(DELAYED, 5)
    assert codes(results) == {"OK": 5}, results
    assert all(DELAY <= r["seconds"] < DELAY + TIMEOUT_MARGIN for r in results), results


def test_max_requests_drops_calls_over_the_limit(mesh: Mesh) -> None:
    """Istio's default retry policy is on this route too: drops are not retried."""
    before = stats(mesh.slow)
    results = mesh.call(LIMITED, CONCURRENT, "--concurrent")
    slow = stats(mesh.slow) - before
    ok = [r for r in results if r["code"] == "OK"]
    dropped = [r for r in results if r["code"] == "UNAVAILABLE"]
    assert len(ok) == MAX_REQUESTS and len(dropped) == CONCURRENT - MAX_REQUESTS, results
    # The admitted calls waited for the slow backend (no route timeout here);
    # the others failed at once instead of queueing behind them.
    assert all(r["seconds"] >= SLOW_SECONDS for r in ok), results
    assert all(r["seconds"] < FAIL_FAST for r in dropped), results
    # Dropped in the client: only the admitted calls reached the backend.
    assert slow["calls"] == MAX_REQUESTS, slow
