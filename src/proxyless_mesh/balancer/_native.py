"""The pickers are native (issue 25): `proxyless_mesh_native.FlatPicker`
makes the random, least-request and round-robin picks over a `Flat`'s arrays
in one crossing, drawing from the balancer's own `random.Random`, counting on
its shared round-robin counter and reading the hosts' own in-flight lists;
`HashPicker` looks a key up in the rings and Maglev tables _pickers.py built.
These two names are the seam the differential tests substitute their Python
reference at (tests/oracles/pickers.py)."""

from __future__ import annotations

from typing import Any

from proxyless_mesh import native_core

flat_picker_class: Any = native_core.member("FlatPicker")
hash_picker_class: Any = native_core.member("HashPicker")
