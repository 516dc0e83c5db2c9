"""Scheduled root rotation: the successor of a generated root is made when the
rotation lead is left of its life (`--root-ttl`, `--root-rotation-lead`), by one
replica only: the leader, when replicas share the root (kube/ca_secret.py
carries the new root to the others). The rotation itself is the CA's usual
overlap (authority.py): the new root is trusted at once, signs one leaf
lifetime later, and the old one stays trusted one more leaf lifetime, so no
workload meets a peer whose root it does not trust.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mesh_control_plane.ca.authority import CaError, CertificateAuthority, RootRecord

__all__ = ["RootSchedule"]

log = logging.getLogger(__name__)

#: The schedule is looked at this often at most (a lead is hours to years).
MAX_CHECK_INTERVAL = 60.0


class RootSchedule:
    """`may_rotate()` says whether this replica is the one that rotates (the
    Lease holder); `on_rotated()` shares the new root (the Secret)."""

    def __init__(
        self,
        authority: CertificateAuthority,
        *,
        may_rotate: Callable[[], bool] = lambda: True,
        on_rotated: Callable[[], None] = lambda: None,
    ) -> None:
        self.authority = authority
        self.may_rotate = may_rotate
        self.on_rotated = on_rotated
        lead = authority.settings.rotation_lead
        self.interval = min(MAX_CHECK_INTERVAL, max(0.5, lead / 10))

    def check(self) -> RootRecord | None:
        """Rotate when due and allowed; the new root's record, or None."""
        if not self.authority.rotation_due() or not self.may_rotate():
            return None
        try:
            new = self.authority.rotate_root()
        except CaError as exc:
            log.warning("scheduled root rotation refused: %s", exc)
            return None
        log.info("scheduled root rotation: new root %s", new.id)
        self.on_rotated()
        return new

    async def run(self) -> None:
        """Check every `interval` seconds until cancelled."""
        while True:
            self.check()
            await asyncio.sleep(self.interval)
