"""Request mirroring decisions (Envoy's request_mirror_policies).

The copy is fire and forget: the driver sends it on its own, never awaits it
on the caller's path, and drops its response and errors.
"""

from __future__ import annotations

import random

from proxyless_mesh.model import MirrorPolicy


def should_mirror(policy: MirrorPolicy, rng: random.Random) -> bool:
    """Whether this request is copied to `policy.cluster` (one draw)."""
    fraction = policy.fraction
    return fraction >= 1.0 or (fraction > 0.0 and rng.random() < fraction)


def shadow_host(host: str) -> str:
    """The authority a mirrored copy carries: Envoy appends `-shadow` to the
    host part, before any port (`reviews.mesh:8080` -> `reviews.mesh-shadow:8080`).
    Like Envoy, a port is the text after the last `:` unless a `]` (a
    bracketed IPv6 literal) comes after it."""
    colon = host.rfind(":")
    if colon != -1 and host.rfind("]") < colon:
        return f"{host[:colon]}-shadow{host[colon:]}"
    return f"{host}-shadow"
