"""The native flat picker (issue 25), when the Rust core is built.

`proxyless_mesh_native.FlatPicker` makes the random, least-request and
round-robin picks over a `Flat`'s arrays in one crossing, drawing from the
balancer's own `random.Random`, counting on its shared round-robin counter
and reading the hosts' own in-flight lists; `HashPicker` looks a key up in
the rings and Maglev tables the Python pickers built: the same picks the
Python pickers make (tests/property/test_native_pick_props.py). Without the core, or with
PROXYLESS_MESH_NATIVE=0, the Python pickers pick.
"""

from __future__ import annotations

from typing import Any

from proxyless_mesh import native_core

flat_picker_class: Any = native_core.member("FlatPicker")
hash_picker_class: Any = native_core.member("HashPicker")
