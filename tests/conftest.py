"""Shared fixtures: a real local mesh (control plane + backends) per test."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from kube import KubeCluster, kube_cluster
from mesh_control_plane.xds import server
from mesh_control_plane.xds.native_engine import native_engine_available
from meshlab import LocalMesh


@pytest.fixture(scope="session", autouse=True)
def session_config_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Module- and session-scoped fixtures start meshes before the per-test
    fixture below applies: give them a cache directory of the session's."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache-session"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(autouse=True)
def private_config_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library caches its last good xDS config under $XDG_CACHE_HOME by
    default: give every test (and the processes it starts) its own, so no test
    starts from another's config or writes to the real home directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LocalMesh]:
    """A work directory for real processes; everything started is stopped."""
    mesh = LocalMesh(tmp_path)
    try:
        yield mesh
    finally:
        mesh.close()


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """One real Kubernetes control plane (etcd, kube-apiserver,
    kube-controller-manager) for the whole session: every kube test shares it, each
    in its own namespace."""
    with kube_cluster(tmp_path_factory.mktemp("kube")) as cluster:
        yield cluster


# The xDS port's transport (issue 24): a test module or test that uses this
# fixture runs once on grpc.aio and once on the native engine, in this process
# (XdsServer's default) and in the control planes it starts (MESH_XDS_ENGINE).
@pytest.fixture(params=["grpc", "native"])
def xds_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    engine = str(request.param)
    if engine == "native" and not native_engine_available():
        pytest.skip("the native xDS engine is not built (make install, with cargo)")
    monkeypatch.setattr(server, "DEFAULT_XDS_ENGINE", engine)
    monkeypatch.setenv("MESH_XDS_ENGINE", engine)
    return engine
