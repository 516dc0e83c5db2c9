"""Shared fixtures: a real local mesh (control plane + backends) per test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from meshlab import LocalMesh


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LocalMesh]:
    """A work directory for real processes; everything started is stopped."""
    mesh = LocalMesh(tmp_path)
    try:
        yield mesh
    finally:
        mesh.close()
