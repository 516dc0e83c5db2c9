"""`serve_asgi`: uvicorn with mesh mTLS, following the control plane.

It binds first (so port 0 works), asks the mesh for each bound port's server
listener (`mesh.serve_inbound`), and wraps the app in the AuthorizationMiddleware fed
by `mesh.inbound_policies(port)`; the TLS mode per connection is then the
listener's PeerAuthentication. An operator's policy change reaches the next
request (policy) or the next connection (mode) without a restart. Once uvicorn
accepts connections it announces the (first) bound port as `port_name`
(default "http"; None: no announcement) with `mesh.announce_port`, which is
what a `Registration` without port numbers waits for (port 0 works).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import uvicorn

from proxyless_mesh.errors import MeshError
from proxyless_mesh.integrations._asgi import AuthorizationMiddleware
from proxyless_mesh.integrations._ext_authz import mesh_ext_authz_client
from proxyless_mesh.integrations._grpc_serving import ModeArg
from proxyless_mesh.integrations._serving import asgi_config
from proxyless_mesh.runtime import check_port

if TYPE_CHECKING:
    from proxyless_mesh.runtime import InboundRuntime

__all__ = ["authorized_asgi", "serve_asgi"]

log = logging.getLogger("proxyless_mesh.serving")


class _AnnouncingServer(uvicorn.Server):
    """uvicorn.Server that announces its port once it accepts connections
    (after `startup`), so the mesh never lists it before it can answer; a
    refused registration stops the server and is raised by `serve_asgi`.
    Told to stop, it leaves the registries first (`withdraw`: DRAINING, then
    the drain time) while still accepting, and only then closes its listeners,
    so no client is sent to a port that stopped answering."""

    def __init__(
        self,
        config: uvicorn.Config,
        announce: Callable[[], Any] | None,
        withdraw: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(config)
        self._announce = announce
        self._withdraw = withdraw
        self.announce_error: BaseException | None = None

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        if self._withdraw is not None and self.announce_error is None:
            try:
                await self._withdraw()
            except Exception:
                # The drain is a courtesy to clients; a failure (control plane
                # gone) must not keep the server from stopping.
                log.exception("leaving the registries before stopping failed")
        await super().shutdown(sockets=sockets)

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.started or self._announce is None:
            return
        try:
            await self._announce()
        except MeshError as exc:  # RegistrationError: stop serving, raise it after
            self.announce_error = exc
            self.should_exit = True


async def serve_asgi(
    app: Any,
    mesh: InboundRuntime,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    mode: ModeArg = None,
    sockets: list[Any] | None = None,
    authorize: bool | None = None,
    port_name: str | None = "http",
    **kwargs: Any,
) -> None:
    """Serve until uvicorn is told to stop (signal, or the task cancelled).

    `authorize` (default: when the bootstrap names a server listener
    template, as meshctl's do): follow the control plane's inbound policy for
    each bound port, as the module docstring says; False serves `app` as is.
    `mode` fixes the PeerAuthentication mode instead of following xDS.
    `port_name`: the WorkloadGroup port name the first bound port is
    announced as once serving (None: not announced). Raises
    RegistrationError when the registration that waited for it is refused.
    When told to stop, it first withdraws the mesh's registrations
    (`mesh.withdraw_async`: DRAINING, then the drain time) while still
    serving, then closes its listeners."""
    if port_name is not None:
        check_port(port_name, 1)  # a bad name fails here, not inside uvicorn's startup
    config = asgi_config(app, mesh, mode=mode, host=host, port=port, **kwargs)
    if authorize is None:
        authorize = bool(mesh.bootstrap.server_listener_resource_name_template)
    if config.uds or config.fd is not None:  # no TCP port to follow or announce
        await uvicorn.Server(config).serve(sockets=sockets)
        return
    owned = sockets is None
    bound = sockets if sockets is not None else [config.bind_socket()]
    try:
        ports = []
        for sock in bound:
            address, local_port = sock.getsockname()[:2]
            if authorize:
                await mesh.serve_inbound_async(local_port, address)
            ports.append(local_port)
        if authorize:
            config.app = authorized_asgi(app, mesh, ports)
            config.loaded = False  # uvicorn wraps config.app when it loads
        announce = None
        if port_name is not None and ports:
            name, first = port_name, ports[0]

            async def announce() -> None:
                await mesh.announce_port_async(name, first)

        server = _AnnouncingServer(config, announce, mesh.withdraw_async)
        await server.serve(sockets=bound)
        if server.announce_error is not None:
            raise server.announce_error
    finally:
        if owned:
            for sock in bound:
                sock.close()


def authorized_asgi(app: Any, mesh: InboundRuntime, ports: list[int]) -> Any:
    """`app` behind the AuthorizationMiddleware fed by the mesh's policy for
    each of `ports` (each already followed with `mesh.serve_inbound`); with
    several ports the request's local port (`scope["server"]`) picks it."""
    ext_authz = mesh_ext_authz_client(mesh)  # CUSTOM providers, reached through the mesh
    guarded = {
        p: AuthorizationMiddleware(app, policies=mesh.inbound_policies(p), ext_authz=ext_authz)
        for p in ports
    }
    if len(guarded) == 1:
        return next(iter(guarded.values()))
    return _ByPort(app, guarded)


class _ByPort:
    """Dispatch to the middleware of the local port; a port without one (an
    HTTP scope without `server`) is refused rather than served unchecked."""

    def __init__(self, app: Any, guarded: dict[int, AuthorizationMiddleware]) -> None:
        self.app = app
        self.guarded = guarded

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        server = scope.get("server")
        middleware = self.guarded.get(server[1]) if server else None
        if middleware is None:
            raise MeshError(f"no inbound policy followed for local address {server}")
        await middleware(scope, receive, send)
