"""A few generated configs go through grpcio's own xDS client: whatever the
translator makes for a gRPC node must be ACKed by the real gRPC, not just
decoded by our library (issue 11: "sample a few through the real clients").

One control plane (the real SnapshotCache and ADS server, in a thread of its
own) and one grpcio process serve every example: each example swaps the
config in, the grpcio process opens `xds:///` channels to that config's
services (which makes it subscribe: LDS, RDS, CDS, EDS), and the control
plane's per-client record must show every type ACKed at what it sent, no NACK.
The endpoints are unroutable on purpose: only the config is under test.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from hypothesis import HealthCheck, given, settings
from istio_configs import mesh_documents
from mesh_control_plane.config import parse_documents
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import LISTENER, ClientKind, NodeInfo, translate
from mesh_control_plane.xds import SnapshotCache, XdsServer
from mesh_control_plane.xds.clients import short_type_name

from proxyless_mesh.xds_client import decode_cluster

NODE_ID = "grpc-native-props"
SETTLE = 20.0  # seconds one example may take to be fully ACKed

# Reads targets (space separated) per line; closes the previous channels, opens
# one per target and starts a call on each (waiting for ready), which makes
# grpcio resolve it through xDS and hold the watches while the call waits.
GRPC_CLIENT = """
import sys, grpc
channels, calls = [], []
print("ready", flush=True)
for line in sys.stdin:
    for call in calls:
        call.cancel()
    for channel in channels:
        channel.close()
    channels = [grpc.insecure_channel("xds:///" + t) for t in line.split()]
    calls = [
        c.unary_unary("/probe.Probe/Call").future(b"", timeout=60, wait_for_ready=True)
        for c in channels
    ]
    print("subscribed", flush=True)
"""


class Plane:
    """The control plane on its own event loop thread, driven from the test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cache = SnapshotCache()
        self.server = XdsServer(self.cache)
        self.port = self.call(lambda: self.server.start("127.0.0.1:0"))

    def call(self, make: Callable[[], Any]) -> Any:
        """Run `make()` on the plane's loop (awaiting it if it is a coroutine)."""

        async def run() -> Any:
            result = make()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)

    def streams(self) -> list[dict[str, Any]]:
        """Per ADS stream of the grpcio client, its per-type record
        (subscription, sent, acked, NACK). grpcio 1.85 opens one stream per
        `xds:///` target (an XdsClient per target), all with our node id."""

        def find() -> list[dict[str, Any]]:
            return [
                {short_type_name(t): s for t, s in record.types.items()}
                for record in self.server.servicer.clients()
                if record.node_id == NODE_ID
            ]

        return list(self.call(find))

    def stop(self) -> None:
        self.call(lambda: self.server.stop(grace=None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def plane() -> Iterator[Plane]:
    plane = Plane()
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def grpc_client(plane: Plane, tmp_path_factory: Any) -> Iterator[subprocess.Popen[str]]:
    workdir = tmp_path_factory.mktemp("grpc-native")
    bootstrap = workdir / "bootstrap.json"
    server = {
        "server_uri": f"127.0.0.1:{plane.port}",
        "channel_creds": [{"type": "insecure"}],
        "server_features": ["xds_v3"],
    }
    bootstrap.write_text(json.dumps({"xds_servers": [server], "node": {"id": NODE_ID}}))
    proc = subprocess.Popen(
        [sys.executable, "-c", GRPC_CLIENT],
        env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(workdir / "stderr.log", "w"),  # noqa: SIM115 - closed with the process
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _settled(streams: list[dict[str, Any]], targets: set[str]) -> bool:
    """grpcio followed the whole graph for every target and ACKed each response."""
    listening = {n for types in streams if "LDS" in types for n in types["LDS"].subscription.names}
    return targets <= listening and all(_stream_settled(types) for types in streams)


def _stream_settled(types: dict[str, Any]) -> bool:
    lds, rds, cds, eds = (types.get(t) for t in ("LDS", "RDS", "CDS", "EDS"))
    if lds is None or rds is None or cds is None or eds is None:
        return False
    if any(s.sent is None or s.acked_version != s.sent_version for s in types.values()):
        return False
    wanted_eds = set()
    for name, packed in cds.sent_resources.items():
        if cds.subscription.includes(name):
            wanted_eds.add(decode_cluster(_message(packed)).eds_service_name)
    return wanted_eds <= eds.subscription.names


def _message(packed: Any) -> Any:
    return cluster_pb2.Cluster.FromString(packed.any.value)


@settings(max_examples=4, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=mesh_documents())
@pytest.mark.interop  # grpcio's own xDS client, in a process
def test_grpcio_acks_generated_configs(
    docs: list[dict[str, Any]], plane: Plane, grpc_client: subprocess.Popen[str]
) -> None:
    config = parse_documents(("gen.yaml", d) for d in docs)
    rs = translate(config, build_static_registry(config), NodeInfo(id="n", kind=ClientKind.GRPC))
    targets = {n for n in rs.resources[LISTENER] if not n.startswith("grpc/server?")}
    plane.call(lambda: plane.cache.set_config(config))
    assert grpc_client.stdin is not None and grpc_client.stdout is not None
    grpc_client.stdin.write(" ".join(sorted(targets)) + "\n")
    grpc_client.stdin.flush()
    assert grpc_client.stdout.readline().strip() == "subscribed"
    deadline = time.monotonic() + SETTLE
    while True:
        streams = plane.streams()
        nacked = [
            (t, s.nack_message)
            for types in streams
            for t, s in types.items()
            if s.nacked_version is not None
        ]
        assert not nacked, (nacked, docs)
        if _settled(streams, targets):
            return
        status = [{t: s.to_status() for t, s in types.items()} for types in streams]
        assert time.monotonic() < deadline, (status, sorted(targets))
        time.sleep(0.05)
