"""A meshed httpx-only process does not load grpcio (issue 25): its ADS
stream goes over h2 (grpc_wire); it loads no protobuf (xds_client/_wire.py
and the native core decode), and no cryptography: without a CA there is no key to
make, and with one the native core makes the key and CSR and reads the
certificates (security/_keys.py, _certificates.py). A fresh interpreter joins a real control
plane (whose Sidecar makes it decode the virtualOutbound listener too), sends
requests through the mesh transport to a real backend, and reports what it
imported; with `PROXYLESS_MESH_CONTROL_TRANSPORT=grpcio` the
same process does load grpcio (so the probe can tell the difference)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from meshlab import LocalMesh

from proxyless_mesh.security._certificates import native_core

HOST = "reviews.default.mesh"

PROBE = """
import json, sys
import httpx
from proxyless_mesh import Mesh
from proxyless_mesh.errors import OutsideMeshError
with Mesh.from_bootstrap(sys.argv[1]) as mesh, httpx.Client(transport=mesh.httpx_transport()) as c:
    versions = [c.get(sys.argv[2]).json()["version"] for _ in range(5)]
    try:  # an address in no registry: the Sidecar's REGISTRY_ONLY refuses it
        c.get("http://127.0.0.1:9/")
        outbound = "passed"
    except OutsideMeshError:
        outbound = "REGISTRY_ONLY"
    except httpx.ConnectError:
        outbound = "ALLOW_ANY"
    manager = mesh.identity_manager
    identity = None if manager is None else manager.credentials.spiffe_id
heavy = ("grpc", "google.protobuf", "envoy", "cryptography")
loaded = sorted({h for h in heavy for m in sys.modules if m == h or m.startswith(h + ".")})
print(json.dumps({"versions": versions, "outbound": outbound, "loaded": loaded,
                  "identity": identity}))
"""

SIDECAR = json.dumps(
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": "default"},
        "spec": {
            "egress": [{"hosts": ["*/*"]}],
            "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
        },
    }
)


def _run_probe(
    bootstrap: Path, transport: str | None, *, native: str | None = None
) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("PROXYLESS_MESH_CONTROL_TRANSPORT", None)
    env.pop("PROXYLESS_MESH_NATIVE", None)
    if transport is not None:
        env["PROXYLESS_MESH_CONTROL_TRANSPORT"] = transport
    if native is not None:
        env["PROXYLESS_MESH_NATIVE"] = native
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(bootstrap), f"http://{HOST}:8080/reviews"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


@pytest.fixture
def started_lab(lab: LocalMesh) -> LocalMesh:
    v1 = lab.start_http_backend("reviews", "v1")
    lab.deploy_versions(HOST, 8080, {"v1": v1}, {"v1": 100})
    lab.write_config("sidecar.yaml", SIDECAR)  # the virtualOutbound listener, decoded too
    lab.start_control_plane()
    return lab


@pytest.fixture
def bootstrap(started_lab: LocalMesh) -> Path:
    return started_lab.bootstrap("imports-probe")


def test_meshed_httpx_process_does_not_load_grpcio(bootstrap: Path) -> None:
    over_h2 = _run_probe(bootstrap, None)
    assert over_h2["versions"] == ["v1"] * 5
    assert over_h2["outbound"] == "REGISTRY_ONLY", over_h2
    assert "grpc" not in over_h2["loaded"], over_h2
    assert "cryptography" not in over_h2["loaded"], over_h2  # no CA here: no key to make
    assert "google.protobuf" not in over_h2["loaded"], over_h2
    assert "envoy" not in over_h2["loaded"], over_h2

    over_grpcio = _run_probe(bootstrap, "grpcio")
    assert over_grpcio["versions"] == ["v1"] * 5
    assert over_grpcio["outbound"] == "REGISTRY_ONLY", over_grpcio
    assert "grpc" in over_grpcio["loaded"], over_grpcio


@pytest.mark.skipif(native_core() is None, reason="native core not built (no Rust)")
def test_a_workload_identity_without_cryptography(started_lab: LocalMesh) -> None:
    """With a CA and a join token the workload gets its certificate (key, CSR
    and certificate reading in Rust) without importing cryptography; with
    the native core turned off, the same process needs it."""
    token = started_lab.token("default", "default")
    bootstrap = started_lab.bootstrap("imports-identity", token=token)
    native = _run_probe(bootstrap, None)
    assert native["identity"] == "spiffe://cluster.local/ns/default/sa/default", native
    assert native["versions"] == ["v1"] * 5
    assert "cryptography" not in native["loaded"], native
    assert "grpc" not in native["loaded"], native

    fallback = _run_probe(bootstrap, None, native="off")
    assert fallback["identity"] == native["identity"], fallback
    assert "cryptography" in fallback["loaded"], fallback
