"""The benchmark mesh: one control plane (with its CA) and the shared servers.

Services (all MESH_INTERNAL ServiceEntries on 127.0.0.1):
- `bench.default.mesh:8080`: HTTP v1 (all plaintext data-path traffic) and v2
  (propagation flips weights to it); `grpcbench.default.mesh:50051`: gRPC.
- `benchmtls.default.mesh:8080`: the same 1 KB app served with mesh mTLS
  (STRICT) by a server holding identity `sa/bench-server`. Its endpoint names
  that serviceAccount, so the translator turns on upstream mTLS by itself
  (auto mTLS, translate/tls.py): nothing else configures TLS.
- `resdefault` / `resoff`: the v1 server again, behind a route with Istio's
  default retry policy (no VirtualService) and one with `retries: {attempts: 0}`.
- `outage-budget` / `outage-nobudget`: a server answering 503 to everything,
  routes retrying 5xx 3 times; the second's DestinationRule sets
  `connectionPool.http.maxRetries`, which replaces the default retry budget
  (translate/cluster_policies.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from meshlab import LocalMesh, Proc, service_entry, start_process
from rows import Setup

HERE = Path(__file__).resolve().parent
HTTP_HOST, HTTP_PORT = "bench.default.mesh", 8080
GRPC_HOST, GRPC_PORT = "grpcbench.default.mesh", 50051
MTLS_HOST = "benchmtls.default.mesh"
RES_DEFAULT_HOST, RES_OFF_HOST = "resdefault.default.mesh", "resoff.default.mesh"
OUTAGE_BUDGET_HOST, OUTAGE_NO_BUDGET_HOST = (
    "outage-budget.default.mesh",
    "outage-nobudget.default.mesh",
)
SERVER_SA, CLIENT_SA = "bench-server", "bench-client"


def _start_server(lab: LocalMesh, name: str, *extra: str) -> Proc:
    argv = [sys.executable, str(HERE / "servers.py"), *extra]
    proc = start_process(f"server-{name}", argv, lab.workdir)
    lab.procs.append(proc)
    return proc


def _doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    group = "networking.istio.io/v1"
    meta = {"name": name, "namespace": "default"}
    return json.dumps({"apiVersion": group, "kind": kind, "metadata": meta, "spec": spec})


def _entry(host: str, port: int, endpoint_port: int, service_account: str = "") -> str:
    endpoint: dict[str, Any] = {"address": "127.0.0.1", "ports": {"http": endpoint_port}}
    if service_account:
        endpoint["serviceAccount"] = service_account
    spec = {
        "hosts": [host],
        "ports": [{"number": port, "name": "http", "protocol": "HTTP"}],
        "resolution": "STATIC",
        "location": "MESH_INTERNAL",
        "endpoints": [endpoint],
    }
    return _doc("ServiceEntry", host.split(".")[0], spec)


def _retry_route(host: str, retries: dict[str, Any]) -> str:
    spec = {
        "hosts": [host],
        "http": [{"route": [{"destination": {"host": host}}], "retries": retries}],
    }
    return _doc("VirtualService", host.split(".")[0], spec)


def _resilience_config(lab: LocalMesh, http_port: int, outage_port: int) -> None:
    docs = [
        _entry(RES_DEFAULT_HOST, HTTP_PORT, http_port),
        _entry(RES_OFF_HOST, HTTP_PORT, http_port),
        _retry_route(RES_OFF_HOST, {"attempts": 0}),
    ]
    outage_retries = {"attempts": 3, "retryOn": "5xx"}
    for host in (OUTAGE_BUDGET_HOST, OUTAGE_NO_BUDGET_HOST):
        docs += [_entry(host, HTTP_PORT, outage_port), _retry_route(host, outage_retries)]
    pool = {"http": {"maxRetries": 1_000_000}}
    docs.append(
        _doc(
            "DestinationRule",
            "outage-nobudget",
            {"host": OUTAGE_NO_BUDGET_HOST, "trafficPolicy": {"connectionPool": pool}},
        )
    )
    lab.write_config("resilience.yaml", "\n---\n".join(docs))


def _wait_served(lab: LocalMesh, needle: str, timeout: float = 15.0) -> None:
    """Until the control plane's config dump holds `needle` (a file written
    after it started is picked up by its config watch), so no row starts early."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dump = httpx.get(f"http://{lab.admin_address}/config_dump", timeout=5).text
        if needle in dump:
            return
        time.sleep(0.05)  # the control plane's config dump has no change to wait on
    raise RuntimeError(f"the control plane did not serve {needle} within {timeout} s")


def start_lab(lab: LocalMesh) -> Setup:
    """Servers, config, control plane (with its CA), then the mTLS server,
    which needs the CA for its certificate before it can serve."""
    v1, v2 = (
        _start_server(lab, "http-v1", "--kind", "http"),
        _start_server(lab, "http-v2", "--kind", "http"),
    )
    grpc_server = _start_server(lab, "grpc", "--kind", "grpc")
    outage = _start_server(lab, "http-503", "--kind", "http", "--status", "503")
    lab.deploy_versions(HTTP_HOST, HTTP_PORT, {"v1": v1, "v2": v2}, {"v1": 100, "v2": 0})
    endpoint = [("127.0.0.1", grpc_server.ready["port"], {"version": "v1"})]
    lab.write_config(
        "grpcbench.yaml", service_entry(GRPC_HOST, GRPC_PORT, endpoint, protocol="GRPC")
    )
    _resilience_config(lab, v1.ready["port"], outage.ready["port"])
    lab.start_control_plane(extra_args=["--leaf-ttl", "1h"])
    server_bootstrap = lab.bootstrap(
        "bench-server-mtls", sa=SERVER_SA, token=lab.token("default", SERVER_SA)
    )
    mtls_server = _start_server(
        lab, "http-mtls", "--kind", "http", "--mesh-bootstrap", str(server_bootstrap)
    )
    lab.write_config(
        "benchmtls.yaml", _entry(MTLS_HOST, HTTP_PORT, mtls_server.ready["port"], SERVER_SA)
    )
    _wait_served(lab, MTLS_HOST)
    return Setup(
        lab=lab,
        http_port=v1.ready["port"],
        grpc_port=grpc_server.ready["port"],
        http_authority=f"{HTTP_HOST}:{HTTP_PORT}",
        grpc_authority=f"{GRPC_HOST}:{GRPC_PORT}",
        mesh_bootstrap=lab.bootstrap("bench-mesh"),
        grpc_bootstrap=lab.bootstrap("bench-grpc-native"),
        mtls_authority=f"{MTLS_HOST}:{HTTP_PORT}",
        mesh_mtls_bootstrap=lab.bootstrap(
            "bench-mesh-mtls", sa=CLIENT_SA, token=lab.token("default", CLIENT_SA)
        ),
        outage_port=outage.ready["port"],
    )
