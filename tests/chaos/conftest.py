"""Chaos tests: registered marker `chaos` (selected by default; deselect
with `-m "not chaos"`) and the harness modules on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: fault injection under load (tests/chaos)")
