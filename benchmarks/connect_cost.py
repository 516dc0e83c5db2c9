"""Our Python per connecting Delta client, in-process and without gRPC.

`python benchmarks/connect_cost.py [CLIENTS] [--profile]`: the request
sequence of benchmarks/adsload (the node, then LDS, RDS, CDS and EDS names,
each ACKed) applied to a real `AdsServicer` over the `cpgo` bench's config (10
services). It measures what the control plane's own code costs a connect storm
(identification, subscriptions, views, answers, metrics), apart from grpc's
share, which a real storm (`run.py --only cpgo`) adds on top. Process CPU per
client, 5 rounds.
"""

from __future__ import annotations

import cProfile
import gc
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cp_go import HOSTS
from cp_scale import PORT
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from mesh_control_plane.config import load_config_dir
from mesh_control_plane.translate import CLUSTER, ENDPOINT, LISTENER, ROUTE, NodeInfo
from mesh_control_plane.xds.clients import ClientRecord
from mesh_control_plane.xds.server import AdsServicer
from mesh_control_plane.xds.snapshot import SnapshotCache
from mesh_control_plane.xds.streams import Stream
from meshlab import service_entry, subsets_rule, weighted_route

ROUNDS = 5


def servicer_and_requests() -> tuple[AdsServicer, list[discovery_pb2.DeltaDiscoveryRequest]]:
    """A servicer over the bench's config, and one subscription per type as a
    client sends them (every resource of its kind: the client follows them all)."""
    endpoints = [("127.0.0.1", 9, {"version": "v1"}), ("127.0.0.1", 10, {"version": "v2"})]
    with tempfile.TemporaryDirectory(prefix="connect-cost-") as tmp:
        config_dir = Path(tmp)
        for i, host in enumerate(HOSTS):
            rule = subsets_rule(host, ["v1", "v2"])
            (config_dir / f"scale{i}.yaml").write_text(
                service_entry(host, PORT, endpoints) + "\n---\n" + rule
            )
            (config_dir / f"route{i}.yaml").write_text(weighted_route(host, {"v1": 90, "v2": 10}))
        config = load_config_dir(config_dir)
    cache = SnapshotCache()
    cache.set_config(config)
    probe = NodeInfo.from_proto(base_pb2.Node(id="probe", user_agent_name="proxyless-mesh"))
    names = {LISTENER: [f"{host}:{PORT}" for host in HOSTS]}
    for type_url in (ROUTE, CLUSTER, ENDPOINT):
        names[type_url] = sorted(cache.resources(probe, type_url))
    requests = [
        discovery_pb2.DeltaDiscoveryRequest(type_url=t, resource_names_subscribe=names[t])
        for t in (LISTENER, ROUTE, CLUSTER, ENDPOINT)
    ]
    return AdsServicer(cache), requests


def connect(
    servicer: AdsServicer, requests: list[discovery_pb2.DeltaDiscoveryRequest], index: int
) -> None:
    """One client's stream: what `AdsServicer._read` does with its requests."""
    stream = Stream(ClientRecord(peer=f"ipv4:127.0.0.1:{10_000 + index}", delta=True))
    servicer._streams.add(stream)
    node = base_pb2.Node(id=f"go-0-{index}", cluster="bench", user_agent_name="proxyless-mesh")
    servicer._identify(stream, node)
    for request in requests:
        servicer._delta.on_request(stream, request)
        sent = stream.record.delta_types[request.type_url].sent_nonce
        ack = discovery_pb2.DeltaDiscoveryRequest(type_url=request.type_url, response_nonce=sent)
        servicer._delta.on_request(stream, ack)
    stream.outbox.clear()


def main() -> None:
    clients = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 3000
    servicer, requests = servicer_and_requests()
    for index in range(200):  # views and answers of the version made once
        connect(servicer, requests, index)
    samples = []
    for _ in range(ROUNDS):
        for stream in list(servicer._streams):
            servicer._forget(stream)
        gc.collect()
        started = time.process_time()
        for index in range(clients):
            connect(servicer, requests, index)
        samples.append((time.process_time() - started) / clients * 1e6)
    print(
        f"our Python per connecting Delta client ({clients:,} clients x {ROUNDS} rounds): "
        f"min {min(samples):.1f} µs, median {statistics.median(samples):.1f} µs"
    )
    if "--profile" in sys.argv:
        profile = cProfile.Profile()
        profile.enable()
        for index in range(clients):
            connect(servicer, requests, index)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
