"""What istiod's per-endpoint telemetry metadata costs in EDS bytes.

    python benchmarks/eds_metadata.py [--endpoints 10000]

The control plane writes filter metadata `istio` / `workload` =
"name;namespace;canonical service;canonical revision;cluster" on every EDS
endpoint (so a caller can name the destination of a request no server
answered). For one service of N endpoints, each kind of endpoint the
registry knows, this builds the ClusterLoadAssignment through the real
translator and serializes it, then again with every endpoint's metadata
cleared: the difference over N is the bytes each endpoint adds to every EDS
response (grpc does not compress xDS by default). Also the translation time
of that assignment (best of 3).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from types import MappingProxyType

from mesh_control_plane.config.model import (
    MeshConfig,
    Meta,
    ServiceEntry,
    ServicePort,
    WorkloadEndpoint,
)
from mesh_control_plane.translate import ENDPOINT, ClientKind, NodeInfo, translate

HOST = "reviews.shop.svc.cluster.local"
CLUSTER = f"outbound|9080||{HOST}"
LABELS = {"app": "reviews", "version": "v1"}


@dataclass(frozen=True)
class Growth:
    kind: str
    metadata: str  # the value written on the first endpoint
    with_bytes: int
    without_bytes: int
    translate_ms: float

    def per_endpoint(self, n: int) -> float:
        return (self.with_bytes - self.without_bytes) / n


def endpoints(kind: str, n: int) -> tuple[WorkloadEndpoint, ...]:
    """`n` instances on 10.x.y.z: WorkloadEntries (each its own name), members
    registered by one WorkloadGroup (its name), or inline ServiceEntry endpoints
    (no workload name; the canonical service from the labels)."""

    def one(i: int) -> WorkloadEndpoint:
        address = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        names = {"entry": (f"reviews-vm-{i}", "shop"), "group": ("reviews-v1", "shop")}
        name, namespace = names.get(kind, ("", ""))
        return WorkloadEndpoint(
            address,
            ports={"http": 9080},
            labels=LABELS,
            service_account="reviews",
            workload_name=name,
            namespace=namespace,
        )

    return tuple(one(i) for i in range(n))


def measure(kind: str, n: int) -> Growth:
    service = ServiceEntry(
        meta=Meta(kind="ServiceEntry", name="reviews", namespace="shop", file="shop/reviews.yaml"),
        hosts=(HOST,),
        ports=(ServicePort(9080, "HTTP", "http"),),
    )
    config = MeshConfig(service_entries=(service,))
    registry = MappingProxyType({HOST: endpoints(kind, n)})
    node = NodeInfo(id="client", kind=ClientKind.MESH)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        assignment = translate(config, registry, node).resources[ENDPOINT][CLUSTER]
        best = min(best, time.perf_counter() - start)
    with_bytes = assignment.ByteSize()
    first = assignment.endpoints[0].lb_endpoints[0].metadata
    value = first.filter_metadata["istio"].fields["workload"].string_value
    for group in assignment.endpoints:
        for lb_endpoint in group.lb_endpoints:
            lb_endpoint.ClearField("metadata")
    return Growth(kind, value, with_bytes, assignment.ByteSize(), best * 1000)


def table(n: int) -> str:
    rows = [
        f"| endpoints ({n:,}) | metadata value | EDS bytes with | without | "
        "bytes per endpoint | growth | translate |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for kind, label in (
        ("entry", "WorkloadEntries"),
        ("group", "WorkloadGroup members"),
        ("inline", "inline ServiceEntry endpoints"),
    ):
        g = measure(kind, n)
        rows.append(
            f"| {label} | `{g.metadata}` | {g.with_bytes:,} | {g.without_bytes:,} | "
            f"{g.per_endpoint(n):.1f} | {g.with_bytes / g.without_bytes - 1:+.0%} | "
            f"{g.translate_ms:.0f} ms |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=10_000)
    print(table(parser.parse_args().endpoints))


if __name__ == "__main__":
    main()
