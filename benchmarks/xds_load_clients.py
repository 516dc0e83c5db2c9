"""Many lightweight xDS clients in one process, for the control-plane table.

    python benchmarks/xds_load_clients.py --xds 127.0.0.1:N --count 2500 \
        --authority bench.default.mesh:8080 --id-prefix p0-

Each client is one raw ADS stream with a node of its own, by default on a
connection of its own (a real client process has one); --streams-per-channel
N puts N such independent streams on one connection (an option to see what
connections cost; the table's default stays one each). Each subscribes the
way our library does: one LDS name, then the RDS, CDS and EDS names as
responses reference them, ACKing every response with its version and nonce.
It keeps no model objects, and speaks bytes: the control plane sends every
stream of a kind the same serialized response, so each distinct payload is
decoded once per process and its ACK serialized once (`Seen`); the clients
cost the control plane what real ones do while costing this process as
little as possible.

Driven over stdin/stdout, one JSON object per line:
    "go"    connect every client; answer {"synced": n, "last": t} once each
            has ACKed endpoints (t: time.monotonic(), shared by processes)
    "arm"   remember each client's route version; answer {"armed": n}
    "wait"  answer {"acks": [t, ...]} once every client has ACKed a route
            version other than the armed one (or after --timeout seconds,
            with the times of those that did)
    With --changed eds, "arm" and "wait" follow the endpoints' content instead
    of the route version (an endpoint change, whatever the version says).
    "quit"
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2

_T = "type.googleapis.com/envoy.config."
LDS, RDS = _T + "listener.v3.Listener", _T + "route.v3.RouteConfiguration"
CDS, EDS = _T + "cluster.v3.Cluster", _T + "endpoint.v3.ClusterLoadAssignment"
NEXT_TYPE = {LDS: RDS, RDS: CDS, CDS: EDS}

GC_THRESHOLDS = (50_000, 20, 10)
"""Fewer young-generation collections: a push allocates a few objects per
stream, thousands of streams at once, nearly all freed by reference counting."""

_references: dict[tuple[str, bytes], tuple[str, ...]] = {}


def _route_clusters(config: route_pb2.RouteConfiguration) -> Iterable[str]:
    for vhost in config.virtual_hosts:
        for route in vhost.routes:
            action = route.route
            if action.cluster:
                yield action.cluster
            for weighted in action.weighted_clusters.clusters:
                yield weighted.name


def references(type_url: str, value: bytes) -> tuple[str, ...]:
    """Names of the next type that one serialized resource refers to (cached)."""
    key = (type_url, value)
    found = _references.get(key)
    if found is not None:
        return found
    names: list[str] = []
    if type_url == LDS:
        listener = listener_pb2.Listener.FromString(value)
        hcm = hcm_pb2.HttpConnectionManager()
        listener.api_listener.api_listener.Unpack(hcm)
        if hcm.HasField("rds"):
            names.append(hcm.rds.route_config_name)
    elif type_url == RDS:
        names.extend(_route_clusters(route_pb2.RouteConfiguration.FromString(value)))
    elif type_url == CDS:
        cluster = cluster_pb2.Cluster.FromString(value)
        names.append(cluster.eds_cluster_config.service_name or cluster.name)
    found = tuple(sorted(set(names)))
    _references[key] = found
    return found


@dataclass
class Client:
    """One ADS stream's bookkeeping."""

    node_id: str
    names: dict[str, frozenset[str]] = field(default_factory=dict)
    nonces: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    synced_at: float = 0.0
    armed_version: str | None = None
    eds_content: int = 0  # hash of the resources of the last EDS response
    armed_content: int | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    changed_at: float = 0.0
    failure: str = ""  # why a stream first failed, if one did
    resets: int = 0  # streams that failed and were reopened

    def note_change(self, differs: bool) -> None:
        """The first response that differs from what was armed sets `changed`."""
        if differs and not self.changed.is_set():
            self.changed_at = time.monotonic()
            self.changed.set()


async def run_client(
    channel: grpc.aio.Channel, client: Client, authority: str, stop: asyncio.Event
) -> None:
    """Follow the ADS stream until `stop`. A failed stream is counted (the
    table reports resets with the first reason) and reopened after a jittered
    wait of 0.1-1 s, as gRPC's reconnect backoff and our library do."""
    while not stop.is_set():
        try:
            await _one_stream(channel, client, authority, stop)
        except grpc.aio.AioRpcError as exc:
            client.resets += 1
            client.failure = client.failure or repr(exc)
            await asyncio.sleep(random.uniform(0.1, 1.0))


ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


class Seen:
    """What one distinct serialized DiscoveryResponse says, decoded once.

    The control plane sends the very same bytes to every stream of a kind
    (one serialization per subscription), so thousands of streams in this
    process receive equal payloads: each is parsed once, and the ACK for it
    (which depends only on it and the names the stream asks for) is
    serialized once per name set and written as bytes."""

    __slots__ = ("acks", "content", "nonce", "resources", "type_url", "version", "wanted")

    def __init__(self, payload: bytes) -> None:
        response = discovery_pb2.DiscoveryResponse.FromString(payload)
        self.type_url = response.type_url
        self.version = response.version_info
        self.nonce = response.nonce
        self.resources = len(response.resources)
        self.content = hash(tuple(any_.value for any_ in response.resources))
        self.wanted = frozenset(
            name for any_ in response.resources for name in references(self.type_url, any_.value)
        )
        self.acks: dict[frozenset[str], bytes] = {}

    def ack(self, names: frozenset[str]) -> bytes:
        found = self.acks.get(names)
        if found is None:
            found = self.acks[names] = _request(self.type_url, self.version, self.nonce, names)
        return found


_seen: dict[bytes, Seen] = {}
_SEEN_LIMIT = 4096  # distinct responses remembered (a few per version in practice)
_NO_NAMES: frozenset[str] = frozenset()


def _request(type_url: str, version: str, nonce: str, names: frozenset[str]) -> bytes:
    payload: bytes = discovery_pb2.DiscoveryRequest(
        type_url=type_url,
        version_info=version,
        response_nonce=nonce,
        resource_names=sorted(names),
    ).SerializeToString()
    return payload


def seen(payload: bytes) -> Seen:
    found = _seen.get(payload)
    if found is None:
        if len(_seen) >= _SEEN_LIMIT:
            _seen.clear()
        found = _seen[payload] = Seen(payload)
    return found


async def _one_stream(
    channel: grpc.aio.Channel, client: Client, authority: str, stop: asyncio.Event
) -> None:
    # Bytes in and out (no serializer: grpc's pass-through): responses are
    # decoded once per distinct payload (`Seen`), not once per stream.
    # No request iterator: grpc.aio would run a task per stream to consume it,
    # and with a queue in front that was 10-25 % of this process's CPU per
    # push. The one reader below writes each request itself and awaits it, so
    # there is never more than one write in flight on the call (concurrent
    # writes are what failed with "Failed execute_batch").
    ads = channel.stream_stream(ADS_METHOD, request_serializer=None, response_deserializer=None)
    call = ads(None, wait_for_ready=True)
    request = discovery_pb2.DiscoveryRequest(type_url=LDS, resource_names=[authority])
    request.node.id, request.node.cluster = client.node_id, "bench"
    request.node.user_agent_name = "proxyless-mesh"
    client.names = {LDS: frozenset([authority])}
    client.nonces = {}
    reader = asyncio.ensure_future(_follow(call, client, request.SerializeToString()))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({reader, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done():
            reader.result()
    finally:
        call.cancel()
        stopping.cancel()
        reader.cancel()


async def _follow(call: Any, client: Client, first: bytes) -> None:
    """Send `first`, then read responses until the stream ends, writing ACKs
    and subscriptions. `call` is a grpc.aio stream-stream call of bytes."""
    await call.write(first)
    names, nonces, versions = client.names, client.nonces, client.versions
    while isinstance(payload := await call.read(), bytes):
        response = seen(payload)
        type_url = response.type_url
        nonces[type_url] = response.nonce
        versions[type_url] = response.version
        await call.write(response.ack(names.get(type_url, _NO_NAMES)))
        if type_url == RDS:
            armed = client.armed_version
            client.note_change(armed is not None and response.version != armed)
        elif type_url == EDS:
            client.eds_content = response.content
            armed_content = client.armed_content
            client.note_change(armed_content is not None and response.content != armed_content)
            if response.resources and not client.synced.is_set():
                client.synced_at = time.monotonic()
                client.synced.set()
            continue
        next_type = NEXT_TYPE.get(type_url)
        wanted = response.wanted
        if next_type is not None and wanted and wanted != names.get(next_type):
            names[next_type] = wanted
            await call.write(
                _request(next_type, versions.get(next_type, ""), nonces.get(next_type, ""), wanted)
            )


def reply(message: object) -> None:
    print(json.dumps(message), flush=True)


async def main_async(args: argparse.Namespace) -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()
    loop.add_reader(sys.stdin.fileno(), lambda: commands.put_nowait(sys.stdin.readline().strip()))
    clients = [Client(f"{args.id_prefix}{i}") for i in range(args.count)]
    stop = asyncio.Event()
    channels: list[grpc.aio.Channel] = []
    tasks: list[asyncio.Task[None]] = []
    reply({"ready": True})
    try:
        while (command := await commands.get()) not in ("quit", ""):
            if command == "go":
                for i, client in enumerate(clients):
                    if i % args.streams_per_channel == 0:
                        # A local subchannel pool: a TCP connection of its own
                        # per channel, not one shared by the whole process.
                        channel = grpc.aio.insecure_channel(
                            args.xds, options=[("grpc.use_local_subchannel_pool", 1)]
                        )
                        channels.append(channel)
                    tasks.append(
                        asyncio.create_task(run_client(channel, client, args.authority, stop))
                    )
                await _wait_all((c.synced for c in clients), args.timeout)
                # The streams' state lives as long as the run: keep the
                # collector from rescanning it on every push (it did, and
                # this harness is meant to cost as little as possible).
                gc.freeze()
                done = [c.synced_at for c in clients if c.synced.is_set()]
                reply(
                    {
                        "synced": len(done),
                        "last": max(done, default=0.0),
                        "resets": sum(c.resets for c in clients),
                        "why": next((c.failure for c in clients if c.failure), ""),
                    }
                )
            elif command == "arm":
                for client in clients:
                    if args.changed == "eds":
                        client.armed_content = client.eds_content
                    else:
                        client.armed_version = client.versions.get(RDS, "")
                    client.changed.clear()
                reply({"armed": len(clients)})
            elif command == "wait":
                await _wait_all((c.changed for c in clients), args.timeout)
                reply(
                    {
                        "acks": [c.changed_at for c in clients if c.changed.is_set()],
                        "resets": sum(c.resets for c in clients),
                    }
                )
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(ch.close(None) for ch in channels))


async def _wait_all(events: Iterable[asyncio.Event], timeout: float) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    if not waiters:
        return
    _, pending = await asyncio.wait(waiters, timeout=timeout)
    for waiter in pending:
        waiter.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--xds", required=True, help="HOST:PORT of the ADS server")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--authority", required=True, help="the one LDS name to ask for")
    parser.add_argument("--id-prefix", default="load-")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--streams-per-channel",
        type=int,
        default=1,
        help="independent ADS streams (each its own node) sharing one connection",
    )
    parser.add_argument(
        "--changed",
        choices=("rds", "eds"),
        default="rds",
        help="what arm/wait follow: the route version, or the endpoints' content",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
