"""grpcio's own xDS client and a DestinationRule with consistentHash on a
header plus outlierDetection (issue 3, interop).

Ring hash (gRFC A42) is honoured: the control plane sends the cluster as
RING_HASH and the route's hash policy on header `x-user`, and every call of a
user reaches the same backend while users spread over backends.

Outlier detection is accepted but NOT enforced by gRPC, by design of the two
APIs rather than by a bug: gRPC (gRFC A50) implements only the success-rate
and failure-percentage algorithms, while Istio's outlierDetection fields
(consecutive5xxErrors, consecutiveGatewayErrors, ...) are consecutive-error
detectors. Following Istio, the translator writes `consecutive_5xx`,
`enforcing_consecutive_5xx: 100` and `enforcing_success_rate: 0`, and leaves
`enforcing_failure_percentage` unset (0). A50 turns success-rate ejection off
when enforcing_success_rate is 0 and failure-percentage ejection off when
enforcing_failure_percentage is 0 or unset, and ignores the consecutive
fields: grpcio keeps the interval, ejection time and maxEjectionPercent but
has no algorithm that could eject anyone. So this test shows only that grpcio
ACKs the cluster and what it was sent; an Istio DestinationRule cannot make a
gRPC client eject a failing backend (our library's own channels do; see
tests/integration/test_outlier_detection.py for the HTTP side).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from meshlab import LocalMesh, service_entry

pytestmark = pytest.mark.interop

HOST = "greeter.default.mesh"
PORT = 50051
USERS = 20
CALLS_PER_USER = 10
NODE = "grpc-ring-hash"
OUTLIER = {
    "consecutive5xxErrors": 3,
    "interval": "1s",
    "baseEjectionTime": "2s",
    "maxEjectionPercent": 50,
}
CLIENT = Path(__file__).with_name("grpc_xds_client.py")


def destination_rule() -> str:
    return json.dumps(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "greeter", "namespace": "default"},
            "spec": {
                "host": HOST,
                "trafficPolicy": {
                    "loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}},
                    "outlierDetection": OUTLIER,
                },
            },
        }
    )


def node_dump(lab: LocalMesh) -> dict[str, Any]:
    url = f"http://{lab.admin_address}/config_dump?node={NODE}"
    with urllib.request.urlopen(url, timeout=5) as response:
        dump: dict[str, Any] = json.loads(response.read())
    return dump


def settled_types(lab: LocalMesh) -> dict[str, Any]:
    """The client's per-type record once all four types are ACKed at the
    version sent; fails at once on a NACK."""
    deadline = time.monotonic() + 20
    while True:
        streams = node_dump(lab)["streams"]
        types: dict[str, Any] = streams[0]["types"] if streams else {}
        nacked = {name: t["error"] for name, t in types.items() if t["nacked"] is not None}
        assert not nacked, nacked
        if len(types) == 4 and all(t["acked"] and t["acked"] == t["sent"] for t in types.values()):
            return types
        assert time.monotonic() < deadline, types
        time.sleep(0.05)


def run_users(lab: LocalMesh) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """Three backends (v1..v3) behind HOST, the rule, and one grpcio client
    process: its per-call answers and, read while it is still connected, the
    control plane's record of what that client was sent and ACKed."""
    backends = {v: lab.start_grpc_backend("greeter", v) for v in ("v1", "v2", "v3")}
    instances = [("127.0.0.1", p.ready["port"], {"version": v}) for v, p in backends.items()]
    entry = service_entry(HOST, PORT, instances, protocol="GRPC")
    lab.write_config("greeter.yaml", entry + "\n---\n" + destination_rule())
    lab.start_control_plane()
    argv = [sys.executable, str(CLIENT), f"xds:///{HOST}:{PORT}", str(USERS * CALLS_PER_USER)]
    argv += ["--header", "x-user", "--users", str(USERS), "--per-call", "--hold"]
    env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(lab.bootstrap(NODE))}
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read().decode()
        answers = [(user, answer) for user, answer in json.loads(line)]
        types = settled_types(lab)
        proc.stdin.close()
        assert proc.wait(20) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return answers, types


def only(resources: dict[str, Any]) -> Any:
    assert len(resources) == 1, list(resources)
    return next(iter(resources.values()))


def test_grpc_ring_hash_on_a_header_is_sticky_per_user(lab: LocalMesh) -> None:
    answers, types = run_users(lab)
    assert len(answers) == USERS * CALLS_PER_USER
    backends_of: dict[str, set[str]] = defaultdict(set)
    for user, answer in answers:
        backends_of[user].add(answer)
    assert len(backends_of) == USERS
    # Sticky: each user's 10 calls (interleaved with everyone else's) hit one backend.
    assert all(len(seen) == 1 for seen in backends_of.values()), dict(backends_of)
    used = set().union(*backends_of.values())
    # Spread: 20 users all on one of 3 backends has probability 3 * 3**-20.
    assert len(used) >= 2, used
    assert used <= {"greeter/v1", "greeter/v2", "greeter/v3"}, used
    # What made it so: a RING_HASH cluster and a header hash policy on the route.
    cluster = only(types["CDS"]["resources"])
    assert cluster["lb_policy"] == "RING_HASH", cluster
    route = only(types["RDS"]["resources"])
    policies = [
        p for vh in route["virtual_hosts"] for r in vh["routes"] for p in r["route"]["hash_policy"]
    ]
    assert policies and all(p["header"]["header_name"] == "x-user" for p in policies), policies


def test_grpc_acks_outlier_detection_it_cannot_enforce(lab: LocalMesh) -> None:
    """See the module docstring: ACKed (settled_types fails on a NACK), and the
    cluster carries only consecutive-error detectors, which A50 ignores, with
    both of A50's algorithms switched off."""
    _, types = run_users(lab)
    outlier = only(types["CDS"]["resources"])["outlier_detection"]
    assert outlier["consecutive_5xx"] == 3
    assert outlier["enforcing_consecutive_5xx"] == 100
    assert (outlier["interval"], outlier["base_ejection_time"]) == ("1s", "2s")
    assert outlier["max_ejection_percent"] == 50
    # A50: success-rate ejection is off when enforcing_success_rate is 0, and
    # failure-percentage ejection is off when enforcing_failure_percentage is 0
    # or unset: grpcio receives no algorithm it implements.
    assert outlier["enforcing_success_rate"] == 0
    assert outlier.get("enforcing_failure_percentage", 0) == 0
