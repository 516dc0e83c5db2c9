"""grpcio's own xDS client and a DestinationRule with consistentHash on a
header plus outlierDetection (issue 3, interop).

Ring hash (gRFC A42) is honoured: the control plane sends the cluster as
RING_HASH and the route's hash policy on header `x-user`, and every call of a
user reaches the same backend while users spread over backends.

Outlier detection is honoured too, in the form gRPC implements. gRPC (gRFC A50)
runs only the success-rate and failure-percentage algorithms and ignores the
consecutive-error detectors Istio's fields map to (consecutive5xxErrors ->
`consecutive_5xx`, ...). So gRPC clients also get a failure-percentage form of
the rule (`enforcing_failure_percentage: 100`, request volume = the error
count, minimum hosts 1, threshold 85; see translate/cluster_policies.py for the
semantic differences: per interval instead of inline, any non-OK status counts).
grpcio 1.85 needs no environment variable for this (A50's
GRPC_EXPERIMENTAL_ENABLE_OUTLIER_DETECTION guard is gone from the binary), and
the test sets none: a backend failing every call with UNAVAILABLE is ejected
after the first interval and the healthy one takes every later call.
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

import grpc
import pytest
from meshlab import HERE, LocalMesh, service_entry, start_process

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
        from processes import stop  # here: this module also runs as a script, without tests/

        stop(proc)
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


def test_grpc_is_sent_outlier_detection_in_a_form_it_enforces(lab: LocalMesh) -> None:
    """ACKed (settled_types fails on a NACK), with Istio's consecutive fields
    kept and A50's failure-percentage algorithm switched on beside them."""
    _, types = run_users(lab)
    outlier = only(types["CDS"]["resources"])["outlier_detection"]
    assert outlier["consecutive_5xx"] == 3
    assert outlier["enforcing_consecutive_5xx"] == 100
    assert (outlier["interval"], outlier["base_ejection_time"]) == ("1s", "2s")
    assert outlier["max_ejection_percent"] == 50
    assert outlier["enforcing_success_rate"] == 0
    # A50: failure-percentage ejection runs when enforcing_failure_percentage > 0.
    assert outlier["enforcing_failure_percentage"] == 100
    assert outlier["failure_percentage_request_volume"] == 3
    assert outlier["failure_percentage_minimum_hosts"] == 1
    assert outlier["failure_percentage_threshold"] == 85


# --- a backend failing every call is ejected by grpcio --------------------------

EJECT_ERRORS = 5
EJECT_RULE = {"consecutive5xxErrors": EJECT_ERRORS, "interval": "1s", "baseEjectionTime": "30s"}
STREAK = 50
"""Consecutive OK calls that mark the ejection point: round robin over a healthy
and a failing backend alternates, so without an ejection even 2 are impossible."""
AFTER = 400
"""Calls made after the streak; with v2 ejected for 30 s none should reach it."""
AFTER_TOLERANCE = 0.01
"""Share of the calls after the ejection point allowed to reach v2. A50 keeps an
ejected endpoint in TRANSIENT_FAILURE for the whole baseEjectionTime (30 s, far
longer than the run), so the expected share is 0; 1 % only guards against an
unforeseen re-admission racing the window's first call."""
EJECTION_WITHIN = 5.0
"""Seconds from the first call to the ejection point. A50's timer fires every
interval (1 s) from when the channel got the cluster; the first firing after
v2 has EJECT_ERRORS calls ejects it. 5 intervals leave room for a loaded host."""
NO_RETRIES: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "greeter", "namespace": "default"},
    "spec": {
        "hosts": [HOST],
        "http": [{"route": [{"destination": {"host": HOST}}], "retries": {"attempts": 0}}],
    },
}
"""Istio's default retry policy (2 attempts, on UNAVAILABLE among others) would
retry each of v2's failures on v1 (gRFC A44), so the caller would see only OKs
(A50 counts attempts, so v2 is ejected all the same). Retries off lets the
client record which backend answered every call."""
CLIENT_DEADLINE = 20.0
CONTROL_SECONDS = 3.0
METHOD = "/greeter.Greeter/SayHello"
FAILING = ("--version", "v2", "--fail-rate", "1", "--fail-code", "UNAVAILABLE")


def backend_counts(port: int) -> dict[str, int]:
    """The backend's own count of SayHello calls (grpc_backend.py's Stats)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stats = channel.unary_unary(
            "/greeter.Greeter/Stats", request_serializer=None, response_deserializer=None
        )
        counts: dict[str, int] = json.loads(stats(b"", timeout=10))
    return counts


Call = tuple[float, str, str]  # (seconds since the first call, status name, backend)


def call_failing_pair(
    lab: LocalMesh, outlier_detection: dict[str, Any], deadline: float
) -> tuple[list[Call], dict[str, int]]:
    """v1 (healthy) and v2 (UNAVAILABLE on every call) behind HOST with
    `outlier_detection` and retries off; one grpcio client process calling until
    the ejection point is followed by STREAK + AFTER calls, or `deadline`
    seconds. Its calls, and each backend's own count of the calls it served."""
    healthy = lab.start_grpc_backend("greeter", "v1")
    failing = start_process(
        "greeter-v2-failing",
        [sys.executable, str(HERE / "grpc_backend.py"), "--service", "greeter", *FAILING],
        lab.workdir,
    )
    lab.procs.append(failing)
    instances = [
        ("127.0.0.1", healthy.ready["port"], {"version": "v1"}),
        ("127.0.0.1", failing.ready["port"], {"version": "v2"}),
    ]
    rule = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "greeter", "namespace": "default"},
        "spec": {"host": HOST, "trafficPolicy": {"outlierDetection": outlier_detection}},
    }
    entry = service_entry(HOST, PORT, instances, protocol="GRPC")
    docs = [entry, json.dumps(rule), json.dumps(NO_RETRIES)]
    lab.write_config("greeter.yaml", "\n---\n".join(docs))
    lab.start_control_plane()
    env = {
        **os.environ,
        "GRPC_XDS_BOOTSTRAP": str(lab.bootstrap("grpc-outlier")),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, __file__, f"xds:///{HOST}:{PORT}", str(deadline)],
        env=env,
        capture_output=True,
        text=True,
        timeout=deadline + 40,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    calls: list[Call] = [(at, code, who) for at, code, who in json.loads(done.stdout)["calls"]]
    served = {
        "greeter/v1": backend_counts(healthy.ready["port"])["calls"],
        "greeter/v2": backend_counts(failing.ready["port"])["calls"],
    }
    return calls, served


def test_grpc_ejects_a_backend_failing_every_call(lab: LocalMesh) -> None:
    calls, served = call_failing_pair(lab, EJECT_RULE, CLIENT_DEADLINE)
    failures = [c for c in calls if c[1] != "OK"]
    # Before the ejection round robin fed v2, which failed each call; A50 needs
    # at least request_volume (= consecutive5xxErrors) of them in an interval.
    assert len(failures) >= EJECT_ERRORS, calls[:20]
    assert {(code, who) for _, code, who in failures} == {("UNAVAILABLE", "greeter/v2")}
    point = ejection_point(calls)
    assert point is not None, f"no run of {STREAK} OK calls after a failure: {calls[-20:]}"
    assert calls[point][0] <= EJECTION_WITHIN, calls[point]
    after = calls[point:]
    assert len(after) >= STREAK + AFTER, len(after)
    to_v2 = sum(1 for _, _, who in after if who != "greeter/v1")
    assert to_v2 <= AFTER_TOLERANCE * len(after), (to_v2, len(after))
    # The backends agree: v2 served exactly the failed calls, v1 every other one.
    assert served == {"greeter/v1": len(calls) - len(failures), "greeter/v2": len(failures)}


def test_grpc_keeps_calling_the_failing_backend_without_an_algorithm(lab: LocalMesh) -> None:
    """The control: with every consecutive detector off (consecutive5xxErrors: 0)
    gRPC gets no algorithm it runs, and for 3 intervals round robin keeps giving
    v2 its half of the calls. So the ejection above is the rule's doing."""
    calls, _ = call_failing_pair(lab, {**EJECT_RULE, "consecutive5xxErrors": 0}, CONTROL_SECONDS)
    assert ejection_point(calls) is None
    late = [c for c in calls if c[0] >= CONTROL_SECONDS - 1.0]  # the third interval
    assert len(late) >= 20, calls[-5:]  # the client did call through it
    failed = sum(1 for c in late if c[1] != "OK")
    # Round robin alternates, so half of them; a new picker (a config push)
    # may restart at a random index, hence a call or two of slack.
    assert abs(failed - len(late) / 2) <= 2 + 0.02 * len(late), (failed, len(late))


def ejection_point(calls: list[Call]) -> int | None:
    """Index of the first call of the first run of STREAK OK calls after a failure."""
    failed, run = False, 0
    for i, (_, code, _) in enumerate(calls):
        if code != "OK":
            failed, run = True, 0
            continue
        run += 1
        if failed and run == STREAK:
            return i - STREAK + 1
    return None


def outlier_client(target: str, deadline: float) -> None:
    """Run as a script by the test above (grpcio reads GRPC_XDS_BOOTSTRAP once
    per process): call `target` one call after another until STREAK + AFTER calls
    followed the ejection point or `deadline` seconds passed, then print
    {"calls": [[seconds, status, backend], ...]} (backend from the answer, or
    the first word of the error details)."""
    calls: list[Call] = []
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        say_hello = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        start = time.monotonic()
        point: int | None = None
        while time.monotonic() - start < deadline:
            at = time.monotonic() - start
            try:
                calls.append((at, "OK", say_hello(b"hi", timeout=5).decode()))
            except grpc.RpcError as error:
                details = error.details() or ""
                calls.append((at, error.code().name, details.split(" ", 1)[0]))
            if point is None:
                point = ejection_point(calls)
            elif len(calls) - point >= STREAK + AFTER:
                break
    print(json.dumps({"calls": calls}), flush=True)


if __name__ == "__main__":
    outlier_client(sys.argv[1], float(sys.argv[2]))
