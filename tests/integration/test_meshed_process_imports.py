"""A meshed httpx-only process does not load grpcio (issue 25): its ADS
stream goes over h2 (grpc_wire); with the native core it loads no protobuf
(xds_client/_wire.py), and without a CA no cryptography. A fresh interpreter joins a real control
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

from proxyless_mesh.xds_client._decode_endpoints import native_decode

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
heavy = ("grpc", "google.protobuf", "envoy", "cryptography")
loaded = sorted({h for h in heavy for m in sys.modules if m == h or m.startswith(h + ".")})
print(json.dumps({"versions": versions, "outbound": outbound, "loaded": loaded}))
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


def _run_probe(bootstrap: Path, transport: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("PROXYLESS_MESH_CONTROL_TRANSPORT", None)
    if transport is not None:
        env["PROXYLESS_MESH_CONTROL_TRANSPORT"] = transport
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
def bootstrap(lab: LocalMesh) -> Path:
    v1 = lab.start_http_backend("reviews", "v1")
    lab.deploy_versions(HOST, 8080, {"v1": v1}, {"v1": 100})
    lab.write_config("sidecar.yaml", SIDECAR)  # the virtualOutbound listener, decoded too
    lab.start_control_plane()
    return lab.bootstrap("imports-probe")


def test_meshed_httpx_process_does_not_load_grpcio(bootstrap: Path) -> None:
    over_h2 = _run_probe(bootstrap, None)
    assert over_h2["versions"] == ["v1"] * 5
    assert over_h2["outbound"] == "REGISTRY_ONLY", over_h2
    assert "grpc" not in over_h2["loaded"], over_h2
    assert "cryptography" not in over_h2["loaded"], over_h2  # no CA here: no key to make
    if native_decode is not None:  # without the native core, protobuf decodes (fallback)
        assert "google.protobuf" not in over_h2["loaded"], over_h2
        assert "envoy" not in over_h2["loaded"], over_h2

    over_grpcio = _run_probe(bootstrap, "grpcio")
    assert over_grpcio["versions"] == ["v1"] * 5
    assert over_grpcio["outbound"] == "REGISTRY_ONLY", over_grpcio
    assert "grpc" in over_grpcio["loaded"], over_grpcio
