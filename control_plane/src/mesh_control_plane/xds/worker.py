"""An ADS worker process: `python -m mesh_control_plane.xds.worker`.

Started by its leader (`workers.py`) with `--xds-workers N`: it serves ADS
(SotW and Delta) on the control plane's xDS port beside the other workers
(SO_REUSEPORT: the kernel spreads new connections over them), from the
snapshots the leader writes to its stdin: frames of a 4-byte length and a
pickle of (version, config, registry), or of ("report", with_clients), the
leader asking for a report. The leader is the parent process that started
this one, over a pipe nobody else holds. It translates for the kinds of
client connected here, as the leader would.

To its stdout it writes JSON lines: {"port": P} once listening; {"stream":
true/false, "node": base64} as streams open and close (the leader's
registry ties self-registered workloads' health to them); {"report":
{"kinds", "metrics", "clients"?, "node_streams"?}} when asked, for the leader's `/metrics`
and `/status` (and `/config_dump?node=`). Reports are on demand: one of thousands of clients costs
both processes milliseconds of CPU, which a report every second spent
whether anyone looked or not. Registration calls that arrive here are
forwarded to the leader's private address. It exits when its stdin closes
(the leader is gone).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import pickle
import struct
import sys
from collections import Counter
from collections.abc import Mapping
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2

from mesh_control_plane.config.model import MeshConfig, WorkloadEndpoint
from mesh_control_plane.translate.incremental import IncrementalTranslator
from mesh_control_plane.xds.registration import SERVICE_NAME
from mesh_control_plane.xds.server import XDS_ENGINES, XdsServer
from mesh_control_plane.xds.snapshot import InconsistentConfigError, SnapshotCache
from mesh_control_plane.xds.tuning import tune_gc

log = logging.getLogger("mesh_control_plane.xds.worker")

FRAME = struct.Struct(">I")
REPORT = "report"
REGISTRATION_METHODS = ("Register", "Deregister")
FORWARD_TIMEOUT = 10.0


def frame(version: int, config: MeshConfig, registry: Mapping[str, Any]) -> bytes:
    """One snapshot as the leader writes it to a worker's stdin."""
    return _pack((version, config, dict(registry)))


def report_request(with_clients: bool, node: str | None = None) -> bytes:
    """The leader asking for a report (clients' kinds and metrics, with
    `with_clients` every client's status, with `node` what the streams of
    that node id were sent: `/config_dump?node=`)."""
    return _pack((REPORT, with_clients, node))


def _pack(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(data)) + data


async def _next_frame(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message from the leader; None at the end of stdin."""
    try:
        header = await reader.readexactly(FRAME.size)
        (size,) = FRAME.unpack(header)
        data = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        return None
    message: tuple[Any, ...] = pickle.loads(data)  # our parent's pipe: trusted
    return message


class _Snapshots:
    """The worker's cache, fed from stdin."""

    def __init__(self) -> None:
        self.registry: Mapping[str, tuple[WorkloadEndpoint, ...]] = {}
        # Endpoint-only changes re-translate only what they touch, as the leader's do.
        # No reference nodes: the leader checked every client kind before it sent
        # the snapshot; a worker translates only for the kinds connected to it
        # (at 10,000 services ~2.1 CPU-s per kind and change, benchmarks/README).
        self.cache = SnapshotCache(
            reference_nodes=(),
            registry_builder=lambda config: self.registry,
            translator=IncrementalTranslator(),
        )

    def apply(self, snapshot: tuple[Any, ...]) -> None:
        version, config, registry = snapshot
        self.registry = registry
        try:
            self.cache.set_config(config, force=True, version=version)
        except InconsistentConfigError as exc:
            log.error("worker %d keeps its last config: %s", os.getpid(), exc)


def _forwarder(leader: grpc.aio.Channel) -> grpc.GenericRpcHandler[Any, Any]:
    """Registration calls, passed to the leader as the bytes they are."""

    def forward(method: str) -> Any:
        # None serializers: grpc's pass-through, the bytes go as they came
        call = leader.unary_unary(f"/{SERVICE_NAME}/{method}", None, None)

        async def handle(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            try:
                answer: bytes = await call(request, timeout=FORWARD_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
                raise  # abort raises; this line is for type checkers
            return answer

        return grpc.unary_unary_rpc_method_handler(handle)

    methods = {m: forward(m) for m in REGISTRATION_METHODS}
    return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)


def _emit(message: Mapping[str, Any]) -> None:
    try:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The leader is gone (killed: its end of the pipe closed). Serving on
        # would keep clients on a config nobody updates, and every stream's
        # end would fail here again: leave now, the clients reconnect to the
        # leader's next workers. os._exit: a normal exit flushes stdout again.
        os._exit(0)


def _on_stream(node: base_pb2.Node, opened: bool) -> None:
    _emit({"stream": opened, "node": base64.b64encode(node.SerializeToString()).decode()})


async def _stdin() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    return reader


def _report(server: XdsServer, with_clients: bool, node: str | None) -> dict[str, Any]:
    servicer = server.servicer
    clients = servicer.clients()
    report: dict[str, Any] = {
        "kinds": Counter(c.kind for c in clients if c.kind),
        "metrics": servicer.metrics.export(),
    }
    if with_clients:
        report["clients"] = [c.to_status() for c in clients]
    if node is not None:
        report["node_streams"] = [c.to_dump() for c in clients if c.node_id == node]
    return report


async def run(xds_address: str, leader_address: str, engine: str = "grpc") -> None:
    snapshots = _Snapshots()
    reader = await _stdin()
    first = await _next_frame(reader)  # the leader's config (it writes that first)
    if first is None:
        return
    snapshots.apply(first)
    async with grpc.aio.insecure_channel(leader_address) as leader:
        forwarder = _forwarder(leader)
        server = XdsServer(
            snapshots.cache, observer=_on_stream, extra_handlers=[forwarder], engine=engine
        )
        _emit({"port": await server.start(xds_address)})
        try:
            while (message := await _next_frame(reader)) is not None:
                if message[0] == REPORT:
                    _emit({"report": _report(server, bool(message[1]), message[2])})
                else:
                    snapshots.apply(message)
        finally:
            await server.stop(grace=1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--xds-address", required=True, help="HOST:PORT shared with the others")
    parser.add_argument("--leader", required=True, help="the leader's private HOST:PORT")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--xds-engine", choices=XDS_ENGINES, default="grpc")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s xds-worker {os.getpid()} %(name)s: %(message)s",
    )
    tune_gc()
    asyncio.run(run(args.xds_address, args.leader, args.xds_engine))


if __name__ == "__main__":
    main()
