"""The serving side of `Mesh` (a base class of it, split from mesh.py).

Inbound: `serve_inbound(port, address)` subscribes to the server listener the
control plane sends for that address (gRFC A36 naming, the bootstrap's
`server_listener_resource_name_template`), carrying PeerAuthentication,
RequestAuthentication and AuthorizationPolicy. The snapshot keeps a compiled
PolicySet per listener; `inbound_policies(port)` is the provider the
authorization middleware calls per request, `inbound_tls_mode(port)` the
mode the serving helpers read per connection.

The server helpers also announce the ports they bound (`announce_port`, for a
Registration without port numbers) and withdraw before they stop
(`withdraw`); these steps run on the mesh's loop, from any thread or loop.
Together with the identity's `credentials()` and `mtls`, this is what
`proxyless_mesh.runtime.InboundRuntime` asks of a mesh.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar, cast

from proxyless_mesh._joining import Joining, log_announce_failure
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.errors import MeshError
from proxyless_mesh.model import INBOUND_PASSTHROUGH, InboundListener, Rbac, RbacAction, TlsMode
from proxyless_mesh.policy import PolicySet
from proxyless_mesh.registration import Registrar
from proxyless_mesh.runtime import MeshSnapshot
from proxyless_mesh.xds_client import XdsClient, XdsState

if TYPE_CHECKING:
    from proxyless_mesh.mesh import Mesh

log = logging.getLogger("proxyless_mesh")
_T = TypeVar("_T")

# No server listener from the control plane for an address it was asked about,
# and no passthrough either (a control plane that sends none): as before it.
_ALLOW_ALL = PolicySet.allow_all()
# Watched but not known yet, or its policy failed to compile: fail closed.
_DENY_ALL = PolicySet([Rbac(RbacAction.ALLOW)])
# Known absent, but this workload is registering the port: the listener the
# registration makes is on its way. 503: clients' default retry policy retries it.
_AWAITING = PolicySet.awaiting()


class MeshInbound:
    """What `Mesh` does for its servers; its state is set by `Mesh.__init__`."""

    bootstrap: Bootstrap
    ready_timeout: float
    snapshot: MeshSnapshot
    _joining: Joining
    # Local port -> the server listener name watched for it (serve_inbound).
    _inbound_names: dict[int, str]
    _loop: asyncio.AbstractEventLoop | None
    _xds: XdsClient | None

    if TYPE_CHECKING:  # Mesh's, used here

        @property
        def xds(self) -> XdsClient: ...

        @property
        def mtls(self) -> bool: ...

        def _on_update(self, state: XdsState) -> None: ...

    def inbound_tls_mode(self, port: int) -> TlsMode:
        """The PeerAuthentication mode for an inbound port: DISABLE without an
        identity; else the mode of the server listener the control plane sent
        for this port (see `serve_inbound`; an undeclared port: the workload's
        passthrough listener's); else PERMISSIVE (Istio's default,
        so a workload joining the mesh keeps its plaintext callers)."""
        if not self.mtls:
            return TlsMode.DISABLE
        listener = self.inbound_listener(port)
        return listener.tls_mode if listener is not None else TlsMode.PERMISSIVE

    def inbound_listener_name(self, port: int, address: str = "0.0.0.0") -> str:
        """The server listener name for `address:port`, by the bootstrap's
        `server_listener_resource_name_template` (IPv6 in brackets, as gRPC)."""
        template = self.bootstrap.server_listener_resource_name_template
        if not template:
            raise MeshError(
                "the bootstrap has no server_listener_resource_name_template: the control "
                "plane cannot be asked for inbound policy (meshctl bootstrap writes one)"
            )
        host = f"[{address}]" if ":" in address else address
        return template.replace("%s", f"{host}:{port}")

    async def serve_inbound_async(
        self, port: int, address: str = "0.0.0.0", *, timeout: float | None = None
    ) -> str:
        """Follow the control plane's inbound policy for a server on
        `address:port`: subscribe to its server listener and wait (at most
        `timeout`, default `ready_timeout`) until it arrived or is known not to
        exist; then `inbound_policies(port)` and `inbound_tls_mode(port)` follow
        it, updates included. Returns the listener name.

        `address` is the address the server binds: the control plane answers
        for the instance address it knows and for 0.0.0.0 / [::]. Raises
        ControlPlaneUnavailableError when it does not answer in time. May be
        awaited on any loop (the watch itself runs on the mesh's)."""
        return await self._await_on_loop(self._serve_inbound(port, address, timeout))

    async def _serve_inbound(self, port: int, address: str, timeout: float | None) -> str:
        name = self.inbound_listener_name(port, address)
        watched = [name, INBOUND_PASSTHROUGH]
        await self.xds.watch_inbound(watched, timeout=self._timeout(timeout))
        self._inbound_names[port] = name
        state = self.xds.state
        if any(n in state.inbound and n not in self.snapshot.inbound for n in watched):
            self._on_update(state)  # the watch finished between two updates
        if name not in state.inbound:
            log.warning(
                "no inbound listener for %s from the control plane (no ServiceEntry or "
                "WorkloadEntry declares this workload on that address and port): %s",
                name,
                "serving with the workload's passthrough policy (its namespace and labels)"
                if INBOUND_PASSTHROUGH in state.inbound
                else "serving without authorization, PeerAuthentication PERMISSIVE",
            )
        return name

    def serve_inbound(
        self, port: int, address: str = "0.0.0.0", *, timeout: float | None = None
    ) -> str:
        """The blocking twin of serve_inbound_async() (not on the mesh's loop)."""
        return self._run_on_loop(
            self._serve_inbound(port, address, timeout),
            self._timeout(timeout) + 1.0,
        )

    @property
    def registrars(self) -> tuple[Registrar, ...]:
        """What this mesh joins on start and leaves on close: `register=`, or the
        Registration the bootstrap's WORKLOAD_GROUP metadata describes."""
        return self._joining.registrars

    @property
    def announced_ports(self) -> dict[str, int]:
        """The ports announced so far (a copy): name -> port."""
        return dict(self._joining.announced)

    def announce_port(self, name: str, port: int) -> concurrent.futures.Future[None]:
        """A server of this workload accepts connections on `port`, the port
        called `name` in its WorkloadGroup template ("http", "grpc"): the
        registrars that wait for it (`Registration` with ports 0 or None) register
        or re-register. Callable from any thread, before or after start; does not
        block: the returned future ends when the registration that carries the
        port is done (RegistrationError if refused; failures are also logged).
        The server helpers call it after binding; see `announce_port_async`."""
        self._joining.remember(name, port)
        loop = self._loop
        if loop is None or self._xds is None:
            # Not started (or stopped): start() hands the ports to the registrars.
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            done.set_result(None)
            return done
        announcing = self._joining.announce(cast("Mesh", self), name, port)
        future = asyncio.run_coroutine_threadsafe(announcing, loop)
        future.add_done_callback(log_announce_failure)
        return future

    async def announce_port_async(self, name: str, port: int) -> None:
        """announce_port(), awaited until registered (RegistrationError if
        refused); may be awaited on any loop."""
        self._joining.remember(name, port)
        if self._loop is not None and self._xds is not None:
            await self._await_on_loop(self._joining.announce(cast("Mesh", self), name, port))

    def inbound_listener(self, port: int) -> InboundListener | None:
        """The server listener in use for `port` (None: not watched, not
        arrived, or the control plane has none for it)."""
        name = self._inbound_names.get(port)
        snapshot = self.snapshot
        entry = snapshot.inbound.get(name) if name is not None else None
        if entry is None and name in snapshot.absent:  # undeclared port: the passthrough
            entry = snapshot.inbound.get(INBOUND_PASSTHROUGH)
        return entry.listener if entry is not None else None

    def inbound_policies(self, port: int) -> Callable[[], PolicySet]:
        """The provider the authorization middlewares take (`policies=`): each
        call returns the PolicySet current for `port` (compiled at update time,
        so a call is two dictionary reads). Listener known not to exist: the
        workload's passthrough policy (`INBOUND_PASSTHROUGH`: what selects its
        namespace and labels; 503 until it arrived), unless this mesh is
        registering the port: then 503 until the listener the registration
        makes arrives (at most the Registration's timeout); watched but not
        usable (not arrived, policy rejected): deny. Raises MeshError when
        `port` was not passed to serve_inbound first."""
        if port not in self._inbound_names:
            raise MeshError(
                f"port {port} is not followed: call mesh.serve_inbound({port}) before "
                "asking for its policies"
            )

        def current() -> PolicySet:
            name = self._inbound_names[port]
            snapshot = self.snapshot
            entry = snapshot.inbound.get(name)
            if entry is not None:
                return entry.policies
            if name not in snapshot.absent:
                return _DENY_ALL
            if self._joining.awaits_inbound_policy(port):
                return _AWAITING
            passthrough = snapshot.inbound.get(INBOUND_PASSTHROUGH)
            if passthrough is not None:
                return passthrough.policies
            # Not yet known: fail closed, retriably; known absent: a control
            # plane that sends no passthrough (not meshctl's), as before.
            return _AWAITING if INBOUND_PASSTHROUGH not in snapshot.absent else _ALLOW_ALL

        return current

    async def withdraw_async(self) -> None:
        """Leave the registries before the server stops accepting: deregister
        (the endpoint turns DRAINING, so clients stop choosing it) and wait each
        registration's drain time while the server still answers. The server
        helpers call it when told to stop; close() does it too, and a second
        call does nothing. May be awaited on any loop."""
        await self._await_on_loop(self._joining.leave())

    def withdraw(self, timeout: float = 30.0) -> None:
        """The blocking twin of withdraw_async() (not on the mesh's loop)."""
        if self._loop is not None:
            self._run_on_loop(self._joining.leave(), timeout)

    # -- a step on the mesh's loop, from any thread or loop -------------------

    def _timeout(self, timeout: float | None) -> float:
        return self.ready_timeout if timeout is None else timeout

    async def _await_on_loop(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Await `coro` on the mesh's loop from any loop (the xDS client and the
        registrars live there); directly when on it or not started."""
        loop = self._loop
        if loop is None or on_loop_thread(loop):
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def _run_on_loop(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        """Run `coro` on the mesh's loop and wait for it from another thread."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise MeshError("the mesh is not started: use `with Mesh(...)` or `async with`")
        if on_loop_thread(loop):
            coro.close()
            raise MeshError("a blocking mesh call on the mesh's own loop: await the _async twin")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


def on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
