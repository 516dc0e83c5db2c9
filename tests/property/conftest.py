"""Hypothesis settings for the property suite: bounded example counts and no
per-example deadline (the machine is shared; a hang is caught by our own
timeouts instead), so the whole suite stays under a minute."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "mesh",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("HYPOTHESIS_RANDOM") is None,
)
settings.register_profile("long", parent=settings.get_profile("mesh"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mesh"))
