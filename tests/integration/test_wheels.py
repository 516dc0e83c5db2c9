"""The wheels a user installs (issue 25): `make wheels`' recipe builds the
native core's wheel with maturin and the library's with pip; installed
without any build step (`pip install --no-deps --target`), they route, pick
and count in a process that imports them from there and from nowhere else.
The native wheel is abi3 (one wheel for every CPython >= 3.11) and manylinux."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

SMOKE = """
import proxyless_mesh, proxyless_mesh_native, sys
from importlib.metadata import requires
from proxyless_mesh.model import (
    MatchKind, PathMatcher, Route, RouteAction, RouteMatch, VirtualHost, WeightedCluster)
from proxyless_mesh.routing import compile_virtual_host
from proxyless_mesh.resilience import ClusterResources
site = sys.argv[1]
assert proxyless_mesh.__file__.startswith(site), proxyless_mesh.__file__
assert proxyless_mesh_native.__file__.startswith(site), proxyless_mesh_native.__file__
assert "proxyless-mesh-native==0.1.0" in requires("proxyless-mesh"), requires("proxyless-mesh")
route = Route("r", RouteMatch(PathMatcher(MatchKind.PREFIX, "/api")),
              RouteAction((WeightedCluster("v1", 1),)))
table = compile_virtual_host(VirtualHost("h", ("h",), (route,)))
assert table.pick("/api/x", "GET", {}.get).cluster == "v1"
assert table.pick("/other", "GET", {}.get) is None
resources = ClusterResources("v1")
assert resources.admit_now() and resources.active_requests == 1
print("ok")
"""


def test_the_wheels_install_without_a_build_and_work(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    env = {**os.environ, "VIRTUAL_ENV": str(BIN.parent)}
    subprocess.run(
        [BIN / "maturin", "build", "--release", "-q", "-m", REPO / "native/Cargo.toml", "-o", dist],
        check=True, env=env, timeout=600,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, REPO],
        check=True, timeout=300,
    )  # fmt: skip
    wheels = sorted(dist.glob("*.whl"))
    native = [w for w in wheels if w.name.startswith("proxyless_mesh_native-")]
    assert len(native) == 1 and len(wheels) == 2, wheels
    tags = native[0].name.removesuffix(".whl").split("-")[2:]
    assert tags[:2] == ["cp311", "abi3"] and tags[2].startswith("manylinux_"), tags
    with zipfile.ZipFile(native[0]) as wheel:
        assert any(
            n.startswith("proxyless_mesh_native") and n.endswith(".so") for n in wheel.namelist()
        )
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile"]
    subprocess.run([*install, "--target", site, *wheels], check=True, timeout=300)
    run = subprocess.run(
        [sys.executable, "-c", SMOKE, str(site)],
        env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
