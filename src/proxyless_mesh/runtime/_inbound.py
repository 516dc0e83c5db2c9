"""`InboundRuntime`: what the serving helpers need from a running mesh.

The inbound half of the seam (`Runtime` is the outbound half): the uvicorn,
grpcio and gunicorn helpers take an `InboundRuntime` (which `Mesh`
implements) and never import `Mesh` or the registration code. Everything
here is read per connection or at bind time, never per request, except
`inbound_policies(port)`'s provider (two dictionary reads).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Protocol

from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.model import TlsMode
from proxyless_mesh.policy import PolicySet
from proxyless_mesh.security import Credentials


def check_port(name: str, port: int, *, announced: bool = True) -> None:
    """Refuse what no control plane could list: an empty name, or a port outside
    1..65535 (0 too when `announced`: a server announces the port it really bound)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a port name must be a non-empty string, not {name!r}")
    low = 1 if announced else 0
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port < 65536:
        raise ValueError(f"port {name!r} must be a number in {low}..65535, not {port!r}")


class InboundRuntime(Protocol):
    """The serving side of a mesh (see the module docstring)."""

    bootstrap: Bootstrap
    # Seconds a blocking step of the mesh may take (the gunicorn worker's bound).
    ready_timeout: float

    @property
    def mtls(self) -> bool:
        """Whether this mesh has (or will get on start) a workload identity."""
        ...

    @property
    def registrars(self) -> Sequence[object]:
        """What the mesh joins and leaves (empty: nothing to drain on stop)."""
        ...

    def credentials(self) -> Credentials:
        """The current key, chain and roots (IdentityError without an identity)."""
        ...

    def inbound_tls_mode(self, port: int) -> TlsMode:
        """The PeerAuthentication mode of a local port, read per connection."""
        ...

    def inbound_policies(self, port: int) -> Callable[[], PolicySet]:
        """The provider of the PolicySet current for a followed port."""
        ...

    def serve_inbound(
        self, port: int, address: str = "0.0.0.0", *, timeout: float | None = None
    ) -> str:
        """Follow the control plane's inbound policy for `address:port` (blocking)."""
        ...

    async def serve_inbound_async(
        self, port: int, address: str = "0.0.0.0", *, timeout: float | None = None
    ) -> str:
        """serve_inbound() for asyncio."""
        ...

    def announce_port(self, name: str, port: int) -> concurrent.futures.Future[None]:
        """A server bound `port` (the template's port `name`): register it."""
        ...

    async def announce_port_async(self, name: str, port: int) -> None:
        """announce_port(), awaited until registered."""
        ...

    def withdraw(self, timeout: float = 30.0) -> None:
        """Deregister and drain before the server stops accepting (blocking)."""
        ...

    async def withdraw_async(self) -> None:
        """withdraw() for asyncio."""
        ...
