"""ADS streams sharded over worker processes on one port (`--xds-workers N`).

One Python event loop serves a push to about 13,000 streams a CPU-second here
(benchmarks/README.md); more clients need more cores. With N > 1 the leader
(the control plane process: config watcher, registry, CA, admin) serves no
ADS on the public port itself. It holds the port (a bound, not listening,
SO_REUSEPORT socket), starts N worker processes (`worker.py`) that listen on
it with SO_REUSEPORT, and hands each every accepted snapshot (config,
registry, version) over its stdin; the kernel spreads connections over the
listening workers. A worker that dies takes only its streams: its clients
reconnect, to the others (they keep routing on their last good config
meanwhile), and the leader starts a new worker.

The leader's own gRPC server listens on a private loopback port, where the
workers forward registration calls; the workers report their streams'
opening and closing (self-registered workloads' health follows them) and,
when the leader asks (`reports`: a scrape of `/metrics` or `/status`), their
clients and metrics, which the leader's pages add to its own, and for
`/config_dump?node=` what their streams of that node were sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import socket
import sys
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2
from google.protobuf.message import DecodeError

from mesh_control_plane.xds import server as xds_server
from mesh_control_plane.xds.snapshot import SnapshotCache
from mesh_control_plane.xds.streams import StreamObserver
from mesh_control_plane.xds.worker import frame, report_request

__all__ = ["XdsWorkers"]

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
STOP_GRACE = 5.0
REPORT_TIMEOUT = 5.0
"""Seconds a page waits for the workers' reports (a worker busy with a
push to thousands of streams answers after it)."""


@dataclass(eq=False)
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    nodes: Counter[bytes] = field(default_factory=Counter)  # open streams per node
    port: asyncio.Future[int] = field(default_factory=asyncio.Future)
    # reports asked for ((with_clients, node)) and not yet answered, in order
    # (None: the worker is gone)
    replies: deque[tuple[tuple[bool, str | None], asyncio.Future[dict[str, Any] | None]]] = field(
        default_factory=deque
    )


class XdsWorkers:
    """The leader's side: start, feed, watch and replace the workers."""

    def __init__(
        self,
        cache: SnapshotCache,
        count: int,
        *,
        observer: StreamObserver | None = None,
        log_level: str = "WARNING",
        engine: str | None = None,
    ) -> None:
        self._cache = cache
        self._engine = engine or xds_server.DEFAULT_XDS_ENGINE  # the leader's default
        self._count = count
        self._observer = observer
        self._log_level = log_level
        self._workers: dict[int, _Worker] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._holder: socket.socket | None = None
        self._address = ""
        self._leader = ""
        self._stopping = False
        self._remove_listener: Callable[[], None] | None = None

    async def start(self, address: str, leader: str) -> int:
        """Hold `address` ("HOST:PORT", port 0 picks one), start the workers
        on it (their registration calls go to `leader`); returns the port
        once every worker listens."""
        host, _, port = address.rpartition(":")
        bare = host.strip("[]")
        family = socket.AF_INET6 if ":" in bare else socket.AF_INET
        holder = socket.socket(family, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((bare or "0.0.0.0", int(port)))
        self._holder = holder
        bound = holder.getsockname()[1]
        self._address, self._leader = f"{host}:{bound}", leader
        self._remove_listener = self._cache.add_listener(lambda _version: self._feed_all())
        await asyncio.gather(*(self._spawn(i) for i in range(self._count)))
        return int(bound)

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers.values()]

    async def reports(
        self, with_clients: bool, timeout: float = REPORT_TIMEOUT, node: str | None = None
    ) -> list[dict[str, Any]]:
        """Ask every worker for a report ({"kinds", "metrics"}, with
        `with_clients` "clients", with `node` "node_streams": what its streams
        of that node id were sent; each client and stream marked with the
        worker's pid) and return those that answer within `timeout`.
        Concurrent callers share a question already asked (when it asks for
        as much)."""
        asked: list[tuple[int, asyncio.Future[dict[str, Any] | None]]] = []
        for worker in self._workers.values():
            stdin = worker.process.stdin
            if stdin is None or stdin.is_closing():
                continue
            last = worker.replies[-1][0] if worker.replies else None
            if last is not None and last[1] == node and (last[0] or not with_clients):
                reply = worker.replies[-1][1]
            else:
                reply = asyncio.get_running_loop().create_future()
                worker.replies.append(((with_clients, node), reply))
                stdin.write(report_request(with_clients, node))
            asked.append((worker.process.pid, reply))
        if not asked:
            return []
        await asyncio.wait([reply for _, reply in asked], timeout=timeout)
        out = []
        for pid, reply in asked:
            report = reply.result() if reply.done() else None
            if report is not None:
                clients = [{**c, "worker": pid} for c in report.get("clients", ())]
                streams = [{**s, "worker": pid} for s in report.get("node_streams", ())]
                out.append({**report, "clients": clients, "node_streams": streams})
        return out

    async def stop(self) -> None:
        """Close every worker's stdin (it stops), kill what outlives the grace."""
        self._stopping = True
        if self._remove_listener is not None:
            self._remove_listener()
        workers = list(self._workers.values())
        for worker in workers:
            if worker.process.stdin is not None:
                worker.process.stdin.close()
        for worker in workers:
            try:
                await asyncio.wait_for(worker.process.wait(), STOP_GRACE)
            except TimeoutError:
                worker.process.kill()
                await worker.process.wait()
        for task in list(self._watchers):
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        if self._holder is not None:
            self._holder.close()

    async def _spawn(self, index: int) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mesh_control_plane.xds.worker",
            "--xds-address",
            self._address,
            "--leader",
            self._leader,
            "--log-level",
            self._log_level,
            "--xds-engine",
            self._engine,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**26,  # a status line of thousands of clients
        )
        worker = _Worker(index, process)
        self._workers[index] = worker
        self._feed(worker)
        task = asyncio.create_task(self._watch(worker))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        port = await asyncio.wait_for(asyncio.shield(worker.port), START_TIMEOUT)
        log.info("ADS worker %d (pid %d) serves port %d", index, process.pid, port)

    def _feed_all(self) -> None:
        for worker in self._workers.values():
            self._feed(worker)

    def _feed(self, worker: _Worker) -> None:
        """Queue the current snapshot on the worker's stdin (in order; the
        pipe's buffer grows rather than block the leader's loop)."""
        stdin = worker.process.stdin
        if stdin is None or stdin.is_closing():
            return
        cache = self._cache
        stdin.write(frame(int(cache.version), cache.config, cache.registry))

    async def _watch(self, worker: _Worker) -> None:
        stdout = worker.process.stdout
        assert stdout is not None
        while line := await stdout.readline():
            self._on_message(worker, json.loads(line))
        code = await worker.process.wait()
        if not worker.port.done():
            worker.port.set_exception(RuntimeError(f"ADS worker exited ({code}) before serving"))
        while worker.replies:
            worker.replies.popleft()[1].set_result(None)
        for node_bytes, open_streams in worker.nodes.items():  # its streams are gone
            for _ in range(open_streams):
                self._tell(node_bytes, False)
        if self._stopping:
            return
        log.warning(
            "ADS worker %d (pid %d) exited (%s): starting another",
            worker.index,
            worker.process.pid,
            code,
        )
        await self._spawn(worker.index)

    def _on_message(self, worker: _Worker, message: dict[str, Any]) -> None:
        if "port" in message and not worker.port.done():
            worker.port.set_result(int(message["port"]))
        elif "report" in message:
            if worker.replies:
                worker.replies.popleft()[1].set_result(message["report"])
        elif "stream" in message:
            node_bytes = base64.b64decode(message["node"])
            opened = bool(message["stream"])
            worker.nodes[node_bytes] += 1 if opened else -1
            if worker.nodes[node_bytes] <= 0:
                del worker.nodes[node_bytes]
            self._tell(node_bytes, opened)

    def _tell(self, node_bytes: bytes, opened: bool) -> None:
        if self._observer is not None:
            with contextlib.suppress(DecodeError):  # a node we cannot read names no workload
                self._observer(base_pb2.Node.FromString(node_bytes), opened)
