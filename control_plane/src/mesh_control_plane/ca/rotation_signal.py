"""Root rotation on a running control plane: `kill -USR1 <pid>`.

The CA's `rotate_root()` has no network trigger on purpose (who may rotate
the mesh's root is an operator question, not a workload one); a signal can
only come from the process's owner (or root), the same people who can read
the CA dir. The rotation follows the CA's usual schedule: the new root joins
the trust bundle now, signs after the longest leaf lifetime, and the old one
leaves one lifetime later.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from mesh_control_plane.ca.authority import CaError, CertificateAuthority

__all__ = ["ROTATE_ROOT_SIGNAL", "install_rotation_signal"]

log = logging.getLogger(__name__)

ROTATE_ROOT_SIGNAL = signal.SIGUSR1


def install_rotation_signal(
    authority: CertificateAuthority,
    on_rotated: Callable[[], None] = lambda: None,
    may_rotate: Callable[[], bool] = lambda: True,
) -> Callable[[], None]:
    """Rotate the root on SIGUSR1 while the running loop lives, then call
    `on_rotated` (replicas share the new root through it); a replica that is
    not `may_rotate()` (not the leader) refuses and says so; returns the
    function that removes the handler. Off the main thread (where asyncio
    cannot take signals) it does nothing and says so."""
    loop = asyncio.get_running_loop()

    def rotate() -> None:
        if not may_rotate():
            log.warning(
                "root rotation requested by SIGUSR1 refused: this replica is not the "
                "leader (the Lease holder rotates the shared root): signal that one"
            )
            return
        try:
            new = authority.rotate_root()
        except CaError as exc:
            log.warning("root rotation requested by SIGUSR1 refused: %s", exc)
            return
        log.info("root rotation requested by SIGUSR1: new root %s", new.id)
        on_rotated()

    try:
        loop.add_signal_handler(ROTATE_ROOT_SIGNAL, rotate)
    except (ValueError, RuntimeError, NotImplementedError):
        log.debug("not on the main thread: no SIGUSR1 root rotation")
        return lambda: None

    def remove() -> None:
        loop.remove_signal_handler(ROTATE_ROOT_SIGNAL)

    return remove
