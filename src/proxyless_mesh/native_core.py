"""The optional native core (issue 25): `proxyless_mesh_native`, built from
native/ by maturin. Each user asks `module()` and falls back to its Python
twin when the answer is None: not built (no Rust where it was installed), or
turned off with PROXYLESS_MESH_NATIVE=off (an A/B, or to rule it out)."""

from __future__ import annotations

import importlib
import os
from typing import Any

__all__ = ["ENV", "member", "module"]

ENV = "PROXYLESS_MESH_NATIVE"


def module() -> Any:
    """`proxyless_mesh_native`, or None when it is not built or turned off."""
    if os.environ.get(ENV, "").lower() in ("0", "off", "false"):
        return None
    try:
        return importlib.import_module("proxyless_mesh_native")
    except ImportError:
        return None


def member(name: str) -> Any:
    """One class or function of the native core, or None: no core, turned
    off, or a core built before `name` existed."""
    return getattr(module(), name, None)
