"""Every load-balancing and resilience feature at once, served to grpcio's own
xDS client and to Envoy: both ACK all four resource types, and traffic flows.

Faults use 0 % (or sit on a path nobody calls) so that they are accepted
without changing the calls; the gRPC client runs in us-east/a, so the locality
failover priorities send all its calls to the us-east/a instance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from meshlab import LocalMesh, Proc
from processes import envoy_binary, stop
from test_envoy import admin_get, envoy_bootstrap, outbound_port

pytestmark = pytest.mark.interop

GREETER = "greeter.default.mesh"
REVIEWS = "reviews.default.mesh"
SHADOW = "shadow.default.mesh"
CALLS = 200

# grpcio reads its bootstrap once per process: one process, held open until the
# test has read the control plane's status (a closed stream leaves no record).
GRPC_CLIENT = """
import json, sys, collections, grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    say_hello = channel.unary_unary("/greeter.Greeter/SayHello")
    counts = collections.Counter(
        say_hello(b"hi", timeout=20, metadata=[("x-user", str(i % 7))]).decode()
        for i in range(int(sys.argv[2]))
    )
    print(json.dumps(counts), flush=True)
    sys.stdin.read()
"""


def service_entry(host: str, port: int, protocol: str, instances: list[dict[str, Any]]) -> Any:
    name = protocol.lower()
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": host.split(".")[0]},
        "spec": {
            "location": "MESH_INTERNAL",
            "hosts": [host],
            "ports": [{"number": port, "name": name, "protocol": protocol}],
            "resolution": "STATIC",
            "endpoints": [
                {"address": "127.0.0.1", "ports": {name: i["port"]}, **i["extra"]}
                for i in instances
            ],
        },
    }


def instance(proc: Proc, version: str, locality: str) -> dict[str, Any]:
    return {
        "port": proc.ready["port"],
        "extra": {"labels": {"version": version}, "locality": locality},
    }


OUTLIER = {
    "consecutive5xxErrors": 5,
    "consecutiveGatewayErrors": 3,
    "consecutiveLocalOriginFailures": 2,
    "splitExternalLocalOriginErrors": True,
    "interval": "10s",
    "baseEjectionTime": "30s",
    "maxEjectionPercent": 50,
    "minHealthPercent": 0,
}
POOL = {
    "tcp": {"maxConnections": 100, "connectTimeout": "1s"},
    "http": {
        "http1MaxPendingRequests": 100,
        "http2MaxRequests": 100,
        "maxRequestsPerConnection": 1000,
        "maxRetries": 10,
        "idleTimeout": "60s",
    },
}


def rule(host: str, load_balancer: dict[str, Any], v2_lb: dict[str, Any]) -> Any:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": host.split(".")[0]},
        "spec": {
            "host": host,
            "trafficPolicy": {
                "loadBalancer": load_balancer,
                "outlierDetection": OUTLIER,
                "connectionPool": POOL,
            },
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {
                    "name": "v2",
                    "labels": {"version": "v2"},
                    "trafficPolicy": {"loadBalancer": v2_lb},
                },
            ],
        },
    }


def routes(host: str, nobody: str) -> Any:
    """Redirect, rewrite and a 100 % abort on paths under `nobody` (never called by
    the gRPC client); retries, 0 % faults, a 0 % mirror and headers on the rest."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": host.split(".")[0]},
        "spec": {
            "hosts": [host],
            "http": [
                {
                    "name": "moved",
                    "match": [{"uri": {"prefix": f"{nobody}old"}}],
                    "redirect": {"uri": "/new", "authority": "new.mesh", "redirectCode": 302},
                },
                {
                    "name": "aborted",
                    "match": [{"uri": {"prefix": f"{nobody}abort"}}],
                    "route": [{"destination": {"host": host, "subset": "v2"}}],
                    "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}},
                },
                {
                    "name": "rewritten",
                    "match": [{"uri": {"prefix": f"{nobody}rw/"}}],
                    "route": [{"destination": {"host": host, "subset": "v2"}}],
                    "rewrite": {"uri": "/rewritten/", "authority": "internal.mesh"},
                    "mirrors": [{"destination": {"host": SHADOW}, "percentage": {"value": 50}}],
                },
                {
                    "name": "main",
                    "route": [{"destination": {"host": host}}],
                    "timeout": "10s",
                    "retries": {
                        "attempts": 3,
                        "perTryTimeout": "2s",
                        "retryOn": "unavailable,cancelled,5xx,503",
                        "retryRemoteLocalities": True,
                    },
                    "fault": {
                        "delay": {"fixedDelay": "5s", "percentage": {"value": 0}},
                        "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 0}},
                    },
                    "mirror": {"host": host, "subset": "v2"},
                    "mirrorPercentage": {"value": 0},
                    "headers": {
                        "request": {"set": {"x-a": "1"}, "add": {"x-b": "2"}, "remove": ["x-c"]},
                        "response": {"set": {"x-mesh": "yes"}, "remove": ["x-version"]},
                    },
                },
            ],
        },
    }


LOCALITY = {"enabled": True, "failover": [{"from": "us-east", "to": "us-west"}]}


@pytest.fixture
def policy_lab(lab: LocalMesh) -> LocalMesh:
    g1, g2 = lab.start_grpc_backend("greeter", "v1"), lab.start_grpc_backend("greeter", "v2")
    r1, r2 = lab.start_http_backend("reviews", "v1"), lab.start_http_backend("reviews", "v2")
    shadow = lab.start_http_backend("shadow", "v1")
    docs = [
        service_entry(
            GREETER,
            50051,
            "GRPC",
            [instance(g1, "v1", "us-east/a"), instance(g2, "v2", "us-west/b")],
        ),
        rule(
            GREETER,
            {
                "consistentHash": {"httpHeaderName": "x-user", "ringHash": {"minimumRingSize": 64}},
                "localityLbSetting": LOCALITY,
            },
            {
                "consistentHash": {
                    "httpCookie": {"name": "s", "ttl": "60s"},
                    "maglev": {"tableSize": 65537},
                }
            },
        ),
        routes(GREETER, "/nobody.Calls/"),
        service_entry(
            REVIEWS,
            8080,
            "HTTP",
            [instance(r1, "v1", "us-east/a"), instance(r2, "v2", "us-west/b")],
        ),
        rule(
            REVIEWS,
            {
                "consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 65537}},
                "localityLbSetting": LOCALITY,
            },
            {
                "simple": "LEAST_REQUEST",
                "warmupDurationSecs": "30s",
                "localityLbSetting": {"distribute": [{"from": "*", "to": {"us-west/*": 100}}]},
            },
        ),
        routes(REVIEWS, "/x/"),
        service_entry(SHADOW, 8080, "HTTP", [instance(shadow, "v1", "")]),
    ]
    lab.write_config("policies.yaml", "\n---\n".join(json.dumps(doc) for doc in docs))
    lab.start_control_plane()
    return lab


def client_types(lab: LocalMesh, node_id: str) -> dict[str, Any] | None:
    with urllib.request.urlopen(f"http://{lab.admin_address}/status", timeout=5) as response:
        status = json.loads(response.read())
    found = [c for c in status["clients"] if c["node_id"] == node_id]
    return found[0]["types"] if found else None


def assert_all_acked(lab: LocalMesh, node_id: str) -> None:
    """All four types acked at the version sent, none nacked (waits for the last ACK)."""
    deadline = time.monotonic() + 20
    while True:
        types = client_types(lab, node_id)
        nacked = {k: v["error"] for k, v in (types or {}).items() if v["nacked"] is not None}
        assert not nacked, nacked
        settled = types is not None and len(types) == 4
        if settled and all(v["acked"] and v["acked"] == v["sent"] for v in types.values()):  # type: ignore[union-attr]
            return
        assert time.monotonic() < deadline, types
        time.sleep(0.05)


def test_grpc_native_xds_client_acks_every_policy_and_calls_flow(policy_lab: LocalMesh) -> None:
    lab = policy_lab
    bootstrap = lab.bootstrap("grpc-policies")
    data = json.loads(bootstrap.read_text())
    data["node"]["locality"] = {"region": "us-east", "zone": "a"}
    bootstrap.write_text(json.dumps(data))
    script = lab.workdir / "grpc_policies_client.py"
    script.write_text(GRPC_CLIENT)
    proc = subprocess.Popen(
        [sys.executable, str(script), f"xds:///{GREETER}:50051", str(CALLS)],
        env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        # Priority 0 is the client's own locality (us-east/a): v1 takes every call.
        assert json.loads(line) == {"greeter/v1": CALLS}
        assert_all_acked(lab, "grpc-policies")
        proc.stdin.close()
        assert proc.wait(20) == 0
    finally:
        stop(proc)


@pytest.fixture
def envoy_admin(policy_lab: LocalMesh) -> Iterator[str]:
    lab = policy_lab
    config = lab.workdir / "envoy.json"
    config.write_text(json.dumps(envoy_bootstrap(int(lab.xds_address.rsplit(":", 1)[1]))))
    admin_file = lab.workdir / "envoy-admin.txt"
    with open(lab.workdir / "envoy.log", "wb") as log:
        proc = subprocess.Popen(
            [
                envoy_binary(),
                "-c",
                str(config),
                "--admin-address-path",
                str(admin_file),
                "--disable-hot-restart",
                "--base-id",
                str(os.getpid() % 50_000 + 50_000),
                "-l",
                "info",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while not admin_file.exists() or not admin_file.read_text().strip():
                assert proc.poll() is None, Path(lab.workdir / "envoy.log").read_text()
                assert time.monotonic() < deadline, "envoy admin did not come up"
                time.sleep(0.02)
            yield admin_file.read_text().strip()
        finally:
            stop(proc)


def test_envoy_acks_every_policy_and_proxies_by_it(policy_lab: LocalMesh, envoy_admin: str) -> None:
    deadline = time.monotonic() + 30
    while (port := outbound_port(envoy_admin)) is None:
        assert time.monotonic() < deadline, "envoy never got the outbound listener"
        time.sleep(0.05)
    host = {"host": f"{REVIEWS}:8080"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5, headers=host) as client:
        deadline = time.monotonic() + 15
        while (response := client.get("/reviews")).status_code != 200:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.05)
        # Locality priorities: Envoy's node has no locality, so both regions are
        # "other" and share priority 0; the response header mutation applies.
        assert response.json()["service"] == "reviews"
        assert response.headers["x-mesh"] == "yes" and "x-version" not in response.headers
        rewritten = client.get("/x/rw/item").json()
        assert (rewritten["path"], rewritten["host"]) == ("/rewritten/item", "internal.mesh")
        moved = client.get("/x/old")
        assert moved.status_code == 302, moved.text
        assert moved.headers["location"].startswith("http://new.mesh")
        assert moved.headers["location"].endswith("/new")
        assert client.get("/x/abort").status_code == 418
    stats = admin_get(envoy_admin, "/stats?filter=update_rejected")
    rejected = [line for line in stats.splitlines() if not line.endswith(": 0")]
    assert stats.strip() and not rejected, stats
    assert_all_acked(policy_lab, "envoy-1")
