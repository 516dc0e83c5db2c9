"""Chaos harness (issue 11): steady open-loop load through the mesh transports
(sync and async httpx clients) against a LocalMesh, one fault at a time,
counting every request's outcome and the p99 latency before vs during.

Open loop: requests are started on a fixed schedule whatever the latency, so
a stall shows up as latency and failures instead of silently slowing the
load down (the coordinated-omission trap)."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
from meshlab import LocalMesh, Proc, service_entry

from proxyless_mesh import Mesh
from proxyless_mesh.model import HealthStatus

log = logging.getLogger(__name__)

HOST = "chaos.default.mesh"
DRAIN = 20.0
PORT = 8080
URL = f"http://{HOST}:{PORT}/"


@dataclass
class Outcomes:
    """Every request's (start time, latency, ok), and failure reasons."""

    samples: list[tuple[float, float, bool]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, start: float, latency: float, error: str | None) -> None:
        with self.lock:
            self.samples.append((start, latency, error is None))
            if error is not None:
                self.errors[error] = self.errors.get(error, 0) + 1

    def window(self, t0: float, t1: float) -> list[tuple[float, float, bool]]:
        with self.lock:
            return [s for s in self.samples if t0 <= s[0] < t1]


def _stack(task: asyncio.Task[object]) -> str:
    out = io.StringIO()
    task.print_stack(file=out)
    return out.getvalue()


def p99(samples: list[tuple[float, float, bool]]) -> float:
    lat = sorted(s[1] for s in samples)
    return lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")


class Load:
    """`rate` requests/s, half through a sync client (thread pool), half
    through an async client (one event loop thread)."""

    def __init__(self, mesh: Mesh, rate: float = 200.0, close_every: int = 0) -> None:
        self.outcomes = Outcomes()
        # Every `close_every`-th request asks for `connection: close`, so new
        # connections (and, with mTLS, handshakes) keep happening during the fault.
        self._close_every = close_every
        self._count = 0
        self._count_lock = threading.Lock()
        self._scheduled_async = 0
        self._async_done = 0
        self._interval = 2.0 / rate
        self._stop = threading.Event()
        self._sync = httpx.Client(transport=mesh.httpx_transport(), timeout=10)
        self._pool = ThreadPoolExecutor(max_workers=32)
        self._loop = asyncio.new_event_loop()
        self._async: httpx.AsyncClient | None = None
        self._threads = [
            threading.Thread(target=self._sync_driver, daemon=True),
            threading.Thread(target=self._loop.run_forever, daemon=True),
        ]
        self._mesh = mesh

    def _headers(self) -> dict[str, str]:
        if not self._close_every:
            return {}
        with self._count_lock:
            self._count += 1
            closing = self._count % self._close_every == 0
        return {"connection": "close"} if closing else {}

    def _one_sync(self) -> None:
        start = time.monotonic()
        try:
            status = self._sync.get(URL, headers=self._headers()).status_code
            error = None if status == 200 else f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        self.outcomes.add(start, time.monotonic() - start, error)

    async def _one_async(self) -> None:
        if self._async is None:
            self._async = httpx.AsyncClient(
                transport=self._mesh.async_httpx_transport(), timeout=10
            )
        start = time.monotonic()
        try:
            status = (await self._async.get(URL, headers=self._headers())).status_code
            error = None if status == 200 else f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        except asyncio.CancelledError:
            # Cancelled by _drain: still unanswered long after its own timeout.
            self.outcomes.add(start, time.monotonic() - start, "unfinished at the end")
            self._async_done += 1
            raise
        self.outcomes.add(start, time.monotonic() - start, error)
        self._async_done += 1

    def _sync_driver(self) -> None:
        tick = time.monotonic()
        while not self._stop.is_set():
            self._pool.submit(self._one_sync)
            self._scheduled_async += 1
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._one_async()))
            tick += self._interval
            self._stop.wait(max(0.0, tick - time.monotonic()))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._threads[0].join()
        self._pool.shutdown(wait=True)
        pending = asyncio.run_coroutine_threadsafe(self._drain(), self._loop)
        try:
            pending.result(timeout=DRAIN + 10)
        except TimeoutError:
            # The loop is too busy even to cancel (CPU-starved: httpcore's pool
            # queue costs O(queued x connections) per request). Count what never
            # finished as failed and leave the daemon loop thread behind.
            missing = self._scheduled_async - self._async_done
            for _ in range(missing):
                self.outcomes.add(time.monotonic(), DRAIN, "unfinished: client loop saturated")
            log.error("%d async requests unfinished: the client's event loop is saturated", missing)
            self._sync.close()
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._threads[1].join()
        self._loop.close()
        self._sync.close()

    async def _drain(self) -> None:
        """Let the requests in flight finish; any still running after DRAIN s
        (well past the client's own 10 s timeout) is cancelled and counted as a
        failure, its stack logged: a hang must show in the table, not stall it."""
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if not tasks:
            return
        _, stuck = await asyncio.wait(tasks, timeout=DRAIN)
        for task in list(stuck)[:1]:
            log.error("request unfinished after %gs:\n%s", DRAIN, _stack(task))
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
        if self._async is not None:
            await self._async.aclose()


def endpoint_health(mesh: Mesh) -> dict[int, HealthStatus]:
    """port -> EDS health of every endpoint the client holds now."""
    return {
        ep.port: ep.health
        for cla in mesh.xds.state.assignments.values()
        for lo in cla.localities
        for ep in lo.endpoints
    }


@dataclass
class Result:
    scenario: str
    sent: int
    failed: int
    p99_before: float
    p99_during: float
    errors: dict[str, int]
    unavoidable: bool = False

    def row(self) -> str:
        return (
            f"{self.scenario:<34} {self.sent:>7} {self.failed:>6} "
            f"{self.p99_before * 1e3:>9.1f} {self.p99_during * 1e3:>9.1f}"
        )


HEADER = f"{'scenario':<34} {'sent':>7} {'failed':>6} {'p99 ms':>9} {'p99 ms':>9}\n" + (
    f"{'':<34} {'':>7} {'':>6} {'before':>9} {'during':>9}"
)


class Cluster:
    """The meshed service: backends in one ServiceEntry the scenario edits."""

    def __init__(self, lab: LocalMesh, replicas: int = 3) -> None:
        self.lab = lab
        self.backends: list[Proc] = [lab.start_http_backend("chaos", "v1") for _ in range(replicas)]
        self.extra_files: dict[str, str] = {}
        self.publish()

    def publish(self, backends: list[Proc] | None = None) -> None:
        ports = [b.ready["port"] for b in (self.backends if backends is None else backends)]
        self.lab.write_config(
            "chaos.yaml", service_entry(HOST, PORT, [("127.0.0.1", p, {}) for p in ports])
        )

    def endpoints_in_use(self, mesh: Mesh) -> set[int]:
        return {
            ep.port
            for cla in mesh.xds.state.assignments.values()
            for lo in cla.localities
            for ep in lo.endpoints
        }

    def wait_for(self, mesh: Mesh, ports: set[int], timeout: float = 15.0) -> None:
        """Until the client's endpoints are exactly `ports` (config propagated)."""
        deadline = time.monotonic() + timeout
        while self.endpoints_in_use(mesh) != ports:
            if time.monotonic() > deadline:
                raise TimeoutError(f"endpoints {self.endpoints_in_use(mesh)} != {ports}")
            time.sleep(0.02)


class ScenarioCheckFailed(RuntimeError):
    """The fault did not happen the way the scenario claims (e.g. no endpoint was
    ever seen DRAINING): the outcome counts would prove nothing."""


@contextmanager
def measured(
    name: str,
    mesh: Mesh,
    rate: float,
    before: float,
    results: list[Result],
    *,
    close_every: int = 0,
    **kw: bool,
) -> Iterator[Load]:
    with Load(mesh, rate, close_every) as load:
        t0 = time.monotonic()
        time.sleep(before)
        t1 = time.monotonic()
        yield load
        time.sleep(0.5)  # requests started during the fault get to finish in __exit__
    # Up to infinity: requests counted as unfinished when the load stopped are failures.
    all_samples = load.outcomes.window(t0, float("inf"))
    during = load.outcomes.window(t1, float("inf"))
    results.append(
        Result(
            name,
            len(all_samples),
            sum(1 for s in all_samples if not s[2]),
            p99(load.outcomes.window(t0, t1)),
            p99(during),
            dict(load.outcomes.errors),
            **kw,
        )
    )


Scenario = Callable[[LocalMesh, float, float, list[Result]], None]
