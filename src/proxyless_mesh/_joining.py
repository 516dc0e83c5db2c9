"""How one Mesh joins and leaves registries: its registrars and the ports its
servers announced.

Kept apart from mesh.py, which only decides on which loop each step runs:
- the registrars come from `Mesh(register=...)`, or from the bootstrap's
  WORKLOAD_GROUP metadata when `register=None` (a gunicorn worker cannot be
  handed one); `register=()` joins nothing;
- an announced port is remembered first, so registrars started later (the mesh
  not started yet) see it in `mesh.announced_ports` when they start;
- leaving goes in reverse order of joining, each registrar draining as it says.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.registration import PortAnnouncements, Registrar, Registration
from proxyless_mesh.runtime import check_port

if TYPE_CHECKING:
    from proxyless_mesh.mesh import Mesh

log = logging.getLogger("proxyless_mesh.registration")


class Joining:
    """The registrars of one Mesh and the ports announced to them."""

    def __init__(
        self, register: Registrar | Sequence[Registrar] | None, bootstrap: Bootstrap
    ) -> None:
        if register is None:
            from_metadata = Registration.from_bootstrap(bootstrap)
            self.registrars: tuple[Registrar, ...] = (
                () if from_metadata is None else (from_metadata,)
            )
        elif isinstance(register, Sequence):
            self.registrars = tuple(register)
        else:
            self.registrars = (register,)
        self.announced: dict[str, int] = {}

    def remember(self, name: str, port: int) -> None:
        """Record a server's bound port (ValueError for a bad name or number)."""
        check_port(name, port)
        self.announced[name] = port

    def awaits_inbound_policy(self, port: int) -> bool:
        """Is one of our Registrations registering `port` right now (its
        inbound listener on its way)? Only Registration promises one: the
        control plane derives it from the WorkloadEntry it makes."""
        return any(
            isinstance(registrar, Registration) and registrar.awaits_inbound_policy(port)
            for registrar in self.registrars
        )

    async def start(self, mesh: Mesh) -> None:
        for registrar in self.registrars:
            await registrar.start(mesh)

    async def announce(self, mesh: Mesh, name: str, port: int) -> None:
        for registrar in self.registrars:
            if isinstance(registrar, PortAnnouncements):
                await registrar.port_announced(mesh, name, port)

    async def leave(self) -> None:
        for registrar in reversed(self.registrars):
            await registrar.stop()


def log_announce_failure(future: concurrent.futures.Future[None]) -> None:
    """The only place a failed announcement of a sync helper (which does not
    wait for the future) is seen."""
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.error("registration after a port announcement failed: %s", exc)
