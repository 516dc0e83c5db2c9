"""grpcio's own xDS client follows the control plane: the same VirtualService
split that our library follows, served to `xds:///` channels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from meshlab import LocalMesh
from stats import assert_binomial

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("xds_engine")]

HOST = "greeter.default.mesh"
CALLS = 1000
# 1,000 calls at 80/20: v2's count is checked at 5 sigma (tests/stats.py).


def test_grpc_xds_channel_follows_80_20_split(lab: LocalMesh) -> None:
    v1 = lab.start_grpc_backend("greeter", "v1")
    v2 = lab.start_grpc_backend("greeter", "v2")
    lab.deploy_versions(HOST, 50051, {"v1": v1, "v2": v2}, {"v1": 80, "v2": 20}, protocol="GRPC")
    lab.start_control_plane()
    bootstrap = lab.bootstrap("grpc-native-client")
    result = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("grpc_xds_client.py")),
            f"xds:///{HOST}:50051",
            str(CALLS),
        ],
        env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert set(counts) == {"greeter/v1", "greeter/v2"}
    assert sum(counts.values()) == CALLS
    assert_binomial(counts["greeter/v2"], CALLS, 0.20, f"v2 of the 80/20 split {counts}")
