"""The native core (issue 25): `proxyless_mesh_native`, built from native/ by
maturin and a required dependency (`proxyless-mesh-native`). The request
decision, xDS decoding and the workload key live there, with no Python twin:
one implementation. This module is the one place that imports it, so a
missing build fails with a message that says what to do."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["member", "module"]

_MISSING = (
    "proxyless-mesh needs its native core, the `proxyless-mesh-native` package: "
    "`pip install proxyless-mesh-native` (wheels for common platforms), or build it "
    "from source with Rust (`make install`, or `pip install ./native`)"
)


def module() -> Any:
    """`proxyless_mesh_native`; ImportError with the remedy when it is absent."""
    try:
        return importlib.import_module("proxyless_mesh_native")
    except ImportError as exc:
        raise ImportError(_MISSING) from exc


def member(name: str) -> Any:
    """One class or function of the native core. A core older than the
    library lacks it: AttributeError naming the rebuild."""
    found = getattr(module(), name, None)
    if found is None:
        raise AttributeError(
            f"proxyless_mesh_native has no {name!r}: the native core is older than the "
            "library; rebuild it (`make install`, or `pip install ./native`)"
        )
    return found
