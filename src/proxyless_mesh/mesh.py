"""`Mesh`: the lifecycle of the in-process mesh.

A Mesh owns the xDS client and the current routing snapshot. Used with
`with`, it runs the xDS client on a background thread with its own event
loop (sync applications); used with `async with`, it runs on the caller's
loop. Either way, entering waits (bounded by `ready_timeout`) until the
control plane answered, so the first request does not race the first config;
a workload with a cached config (see xds_client's disk cache) starts from it
as soon as the control plane is found unreachable, and connects in the
background.

Identity: when the bootstrap names a CA (`proxyless_mesh.ca_address`), the
mesh gets this workload's SPIFFE certificate on start (asking again with
backoff, bounded by `ready_timeout`, failing with a typed IdentityError rather
than starting without one; a still-valid cached certificate starts at once,
see security's CertificateCache) and renews it on the mesh's loop; mutual TLS is then on by
default for destinations whose cluster carries upstream TLS, and for the
serving helpers. Without a CA the mesh runs plaintext, as before.

Inbound: `serve_inbound(port, address)` subscribes to the server listener the
control plane sends for that address (gRFC A36 naming, the bootstrap's
`server_listener_resource_name_template`), carrying PeerAuthentication,
RequestAuthentication and AuthorizationPolicy. The snapshot keeps a compiled
PolicySet per listener; `inbound_policies(port)` is the provider the
authorization middleware calls per request, `inbound_tls_mode(port)` the
mode the serving helpers read per connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import grpc.aio
import httpx

from proxyless_mesh._background import Background
from proxyless_mesh._joining import Joining, log_announce_failure
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.diagnostics import DiagnosticsServer
from proxyless_mesh.errors import (
    ControlPlaneUnavailableError,
    IdentityError,
    MeshError,
)
from proxyless_mesh.integrations import (
    AioMeshChannel,
    AsyncMeshTransport,
    MeshChannel,
    MeshTransport,
    native_channel,
    normalize_target,
)
from proxyless_mesh.model import (
    INBOUND_PASSTHROUGH,
    CircuitBreakers,
    Cluster,
    InboundListener,
    Rbac,
    RbacAction,
    TlsMode,
)
from proxyless_mesh.policy import PolicySet
from proxyless_mesh.registration import Registrar
from proxyless_mesh.resilience import ClusterResources
from proxyless_mesh.runtime import ALLOW_ANY, REGISTRY_ONLY, MeshSnapshot
from proxyless_mesh.security import (
    CertificateCache,
    Credentials,
    IdentityConfig,
    IdentityManager,
    MeshHealth,
)
from proxyless_mesh.snapshot import build_snapshot
from proxyless_mesh.telemetry import (
    NO_POLICY,
    Telemetry,
    TelemetryConfig,
    TelemetrySpecError,
    metrics_meter,
    policy_from_specs,
)
from proxyless_mesh.xds_client import XdsClient, XdsState, config_cache_path

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
# With a cached config, entering waits at most this long for the control plane
# (less when every server refused at once), then serves from the cache.
WARM_START_WAIT = 1.0


class Mesh:
    """The mesh inside this process.

    Args:
        bootstrap: where the control plane is and who this workload is.
        ready_timeout: seconds to wait, on entering, for the control plane.
        resolve_timeout: seconds a request to a never-seen host waits for the
            control plane to say whether it is a mesh service.
        preload: authorities (`host:port`) to fetch on start, so their first
            request does not wait for a round trip to the control plane.
        outbound_policy: `ALLOW_ANY` passes non-mesh hosts through untouched;
            `REGISTRY_ONLY` refuses them with OutsideMeshError.
        admin_address: `HOST:PORT` (port 0 picks one) to serve CSDS on while
            started (see `proxyless_mesh.diagnostics`); None (default): no
            admin endpoint. The bound address is `mesh.diagnostics.address`.
        mtls: None (default): get an identity and talk mTLS when the bootstrap
            names a CA; False: never (plaintext even with a CA configured);
            True: require it (IdentityConfigError if the bootstrap has no CA).
        telemetry: the metrics, traces and access logs of the transports and
            channels (default: metrics and traces to the global OpenTelemetry
            providers, no access logs; `TelemetryConfig.off()` for none).
        cache_certificate: keep the workload key and certificate (0600) beside
            the config cache, so a restart while the CA is down starts with
            them until they expire. None (default): as the bootstrap's
            `proxyless_mesh.certificate_cache` says (on unless false); False:
            memory only (a restart then needs the CA).
    """

    def __init__(
        self,
        bootstrap: Bootstrap,
        *,
        ready_timeout: float = 10.0,
        resolve_timeout: float = 5.0,
        preload: Iterable[str] = (),
        outbound_policy: str = ALLOW_ANY,
        register: Registrar | Sequence[Registrar] | None = None,
        admin_address: str | None = None,
        mtls: bool | None = None,
        telemetry: TelemetryConfig | None = None,
        cache_certificate: bool | None = None,
    ) -> None:
        if outbound_policy not in (ALLOW_ANY, REGISTRY_ONLY):
            raise MeshError(
                f"outbound_policy must be {ALLOW_ANY} or {REGISTRY_ONLY}, not {outbound_policy!r}"
            )
        self.bootstrap = bootstrap
        self.ready_timeout = ready_timeout
        self.resolve_timeout = resolve_timeout
        self.outbound_policy = outbound_policy
        self.telemetry = Telemetry.from_bootstrap(bootstrap, telemetry)
        self._telemetry_specs: str | None = None  # as the listeners last carried them
        self._preload = tuple(preload)
        # register=: join on start (proxyless_mesh.registration); leave, draining, first on
        # close. None: as the bootstrap's WORKLOAD_GROUP metadata says (if any); (): never.
        # Also the ports the server helpers bound (announce_port).
        self._joining = Joining(register, bootstrap)
        self.snapshot = MeshSnapshot()
        self.rng = random.Random()
        # Circuit-breaker counters per cluster: shared by every request of
        # this process and kept across config updates (only limits change).
        self._resources: dict[str, ClusterResources] = {}
        self._resources_lock = threading.Lock()
        # Mirrored copies are sent from here, so they never slow the caller.
        self.background = Background(max_workers=4, max_queued=64)
        self.mirror_failures = 0
        self._identity_config = IdentityConfig.for_mesh(bootstrap, mtls)
        self._certificate_cache = CertificateCache.beside(
            config_cache_path(bootstrap), bootstrap, cache_certificate
        )
        self._identity: IdentityManager | None = None
        self._xds: XdsClient | None = None
        self.admin_address = admin_address
        self.diagnostics: DiagnosticsServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # Local port -> the server listener name watched for it (serve_inbound).
        self._inbound_names: dict[int, str] = {}
        # Started from the cache: preload and registration wait for the control plane.
        self._deferred_join: asyncio.Task[None] | None = None

    @classmethod
    def from_bootstrap(cls, path: str | os.PathLike[str] | None = None, **options: object) -> Mesh:
        """A Mesh from a bootstrap file, or from GRPC_XDS_BOOTSTRAP /
        GRPC_XDS_BOOTSTRAP_CONFIG when no path is given (as grpcio does)."""
        bootstrap = Bootstrap.from_file(path) if path is not None else Bootstrap.from_env()
        return cls(bootstrap, **options)  # type: ignore[arg-type]

    @property
    def control_plane(self) -> str:
        return self.bootstrap.xds_servers[0].server_uri

    @property
    def xds(self) -> XdsClient:
        if self._xds is None:
            raise MeshError("the mesh is not started: use `with Mesh(...)` or `async with`")
        return self._xds

    # -- identity ------------------------------------------------------------

    @property
    def identity(self) -> str | None:
        """This workload's SPIFFE ID when mTLS is on (known from the
        bootstrap even before the first certificate), else None."""
        config = self._identity_config
        return config.identity.uri if config is not None else None

    @property
    def mtls(self) -> bool:
        """Whether this mesh has (or will get on start) a workload identity."""
        return self._identity_config is not None

    @property
    def identity_manager(self) -> IdentityManager | None:
        """The running identity manager (None before start or without mTLS)."""
        return self._identity

    def credentials(self) -> Credentials:
        """The current key/chain/roots; IdentityError without a started identity."""
        if self._identity is None:
            raise IdentityError(
                "this mesh has no workload identity: the bootstrap names no CA "
                "('proxyless_mesh.ca_address'), mtls=False, or the mesh is not started"
            )
        return self._identity.credentials

    def outbound_credentials(self) -> Credentials:
        """The credentials to start an outbound mTLS handshake with: as
        credentials(), but fails closed once the certificate has expired
        (WorkloadCertificateExpiredError, naming the expiry and the last
        renewal error) rather than let every peer refuse it with a TLS alert.
        Inbound keeps serving the current certificate: the peer decides."""
        manager = self._identity
        if manager is None:
            return self.credentials()  # raises the IdentityError documented there
        return manager.valid_credentials()

    def client_ssl_context(self, alpn_protocols: Sequence[str] = ()) -> ssl.SSLContext:
        """Outbound mTLS context of the current certificate (new per rotation):
        verifies the peer's chain, not its SPIFFE ID (see security.verify_peer).
        WorkloadCertificateExpiredError once it expired (see outbound_credentials)."""
        return self.outbound_credentials().client_ssl_context(alpn_protocols)

    def health(self) -> MeshHealth:
        """The mesh's view of itself for a health endpoint: identity ok /
        at_risk / expired / disabled, seconds to the certificate's expiry, the
        last renewal error, and whether the xDS stream is up. Cheap (a clock
        read, no I/O) and safe from any thread; a change of identity state
        first noticed here is logged here (see security/_expiry.py)."""
        manager, xds = self._identity, self._xds
        return MeshHealth.of(
            manager.status() if manager is not None else None,
            xds.connected if xds is not None else False,
        )

    def server_ssl_context(
        self, alpn_protocols: Sequence[str] = (), *, require_client_cert: bool = True
    ) -> ssl.SSLContext:
        """Inbound mTLS context of the current certificate (new per rotation)."""
        return self.credentials().server_ssl_context(
            alpn_protocols, require_client_cert=require_client_cert
        )

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

    # -- inbound (server side) ---------------------------------------------

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

    # -- ports announced by the server helpers (registration) ---------------

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
        future = asyncio.run_coroutine_threadsafe(self._joining.announce(self, name, port), loop)
        future.add_done_callback(log_announce_failure)
        return future

    async def announce_port_async(self, name: str, port: int) -> None:
        """announce_port(), awaited until registered (RegistrationError if
        refused); may be awaited on any loop."""
        self._joining.remember(name, port)
        if self._loop is not None and self._xds is not None:
            await self._await_on_loop(self._joining.announce(self, name, port))

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

    def _timeout(self, timeout: float | None) -> float:
        return self.ready_timeout if timeout is None else timeout

    async def _await_on_loop(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Await `coro` on the mesh's loop from any loop (the xDS client and the
        registrars live there); directly when on it or not started."""
        loop = self._loop
        if loop is None or _on_loop_thread(loop):
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def _run_on_loop(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        """Run `coro` on the mesh's loop and wait for it from another thread."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise MeshError("the mesh is not started: use `with Mesh(...)` or `async with`")
        if _on_loop_thread(loop):
            coro.close()
            raise MeshError("a blocking mesh call on the mesh's own loop: await the _async twin")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    # -- transports --------------------------------------------------------

    def httpx_transport(self, inner: httpx.BaseTransport | None = None) -> MeshTransport:
        return MeshTransport(self, inner)

    def async_httpx_transport(
        self, inner: httpx.AsyncBaseTransport | None = None
    ) -> AsyncMeshTransport:
        return AsyncMeshTransport(self, inner)

    def grpc_channel(
        self, target: str, *, native: bool = False, options: Sequence[tuple[str, Any]] = ()
    ) -> grpc.Channel:
        """A sync gRPC channel to a mesh service (`host:port`).

        Library mode (default): the mesh routes and balances each call over
        per-endpoint sub-channels. `native=True`: grpcio's own xDS client
        (`xds:///` target) follows the same control plane; see the README for
        what each mode supports.
        """
        if native:
            channel: grpc.Channel = native_channel(
                self._native_target(target), options, **self._native_security()
            )
            return channel
        return MeshChannel(self, target, options)

    def aio_grpc_channel(
        self, target: str, *, native: bool = False, options: Sequence[tuple[str, Any]] = ()
    ) -> grpc.aio.Channel:
        """The asyncio twin of grpc_channel()."""
        if native:
            aio: grpc.aio.Channel = native_channel(
                self._native_target(target), options, aio=True, **self._native_security()
            )
            return aio
        return AioMeshChannel(self, target, options)

    def _native_security(self) -> dict[str, Any]:
        return {"mtls": self.mtls, "certificate_providers": self.bootstrap.certificate_providers}

    def _native_target(self, target: str) -> str:
        """grpcio reads its bootstrap from the environment when it creates its
        xDS client (once per process). Unless the application set one, give it
        this mesh's bootstrap, so both clients follow the same control plane."""
        if "GRPC_XDS_BOOTSTRAP" not in os.environ and "GRPC_XDS_BOOTSTRAP_CONFIG" not in os.environ:
            os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = self.bootstrap.to_json()
        return f"xds:///{normalize_target(target)}"

    # The runtime seam (`proxyless_mesh.runtime.Runtime`) the integrations see.
    clock = staticmethod(time.monotonic)

    @property
    def node_id(self) -> str:
        return self.bootstrap.node_id

    def cluster_resources(self, name: str, cluster: Cluster | None) -> ClusterResources:
        """The process-wide limits and counters of one cluster (created on
        first use, thresholds refreshed when the cluster's config changed)."""
        limits = cluster.circuit_breakers if cluster is not None else CircuitBreakers()
        resources = self._resources.get(name)
        if resources is None:
            with self._resources_lock:
                resources = self._resources.setdefault(name, ClusterResources(name, limits))
        if resources.limits is not limits and resources.limits != limits:
            resources.update(limits)
        return resources

    def count_mirror_failure(self) -> None:
        """A mirrored copy failed or was dropped; never the caller's concern."""
        self.mirror_failures += 1

    # -- config updates ----------------------------------------------------

    def _on_update(self, state: XdsState) -> None:
        """Called by the xDS client on its loop after each applied response.
        Building happens off the request path; the swap is one assignment."""
        self.snapshot = build_snapshot(state, self.snapshot)
        specs = _telemetry_specs(state)
        if specs != self._telemetry_specs:
            self._telemetry_specs = specs
            try:
                policy = policy_from_specs(json.loads(specs)) if specs else NO_POLICY
            except (TelemetrySpecError, ValueError) as exc:
                log.error("Telemetry from the control plane not applied: %s", exc)
            else:
                self.telemetry.apply_policy(policy)

    async def _start(self) -> None:
        """The xDS stream connects in the background while the identity is
        got (one deadline for both); a cached config starts at once when the
        control plane is not there (the xDS client logs that outage)."""
        deadline = asyncio.get_running_loop().time() + self.ready_timeout
        self._xds = XdsClient(self.bootstrap, on_update=self._on_update)
        await self._xds.start()
        try:
            if self.admin_address is not None:
                self.diagnostics = DiagnosticsServer.for_client(self._xds, self.bootstrap)
                await self.diagnostics.start(self.admin_address)
            await self._start_identity()
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            if not await self._xds.wait_ready(remaining, warm_wait=WARM_START_WAIT):
                log.info("started from the cached config; connecting in the background")
                self._deferred_join = asyncio.create_task(self._join_when_connected())
                return
            await self._join()
        except BaseException:
            await self._close_xds()
            raise

    async def _join(self) -> None:
        """Once connected: fetch `preload`, then register (`register=`)."""
        if self._preload:
            await self.xds.watch(self._preload, timeout=self.ready_timeout)
        await self._joining.start(self)

    async def _join_when_connected(self) -> None:
        """Started from the cache: join when the control plane answers."""
        await self.xds.wait_connected(None)
        try:
            await self._join()
        except MeshError as exc:  # RegistrationError, or no answer in time
            log.error("joining the mesh after the control plane came back failed: %s", exc)

    async def _start_identity(self) -> None:
        """First certificate before anything else: a workload that cannot
        prove who it is must not start half-meshed. A refusal by the CA
        (TokenRejectedError) or a CA that does not answer in `ready_timeout`
        (CertificateAuthorityUnavailableError) ends the start."""
        config = self._identity_config
        if config is None:
            return
        manager = IdentityManager(
            config,
            meter=metrics_meter(self.telemetry.config),
            cache=self._certificate_cache,
        )
        await manager.start_within(self.ready_timeout)
        self._identity = manager

    async def _close_xds(self) -> None:
        """Stop the admin endpoint (if any), the xDS client, then the identity
        (its renewal task and its channel to the CA)."""
        try:
            await self._close_xds_only()
        finally:
            manager, self._identity = self._identity, None
            if manager is not None:
                await manager.close()

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

    async def _close_xds_only(self) -> None:
        """Deregister (draining) first, then stop the admin endpoint (if any),
        then the xDS client."""
        if self._deferred_join is not None:
            task, self._deferred_join = self._deferred_join, None
            task.cancel()
            await asyncio.wait([task])
        await self._joining.leave()
        if self.diagnostics is not None:
            diagnostics, self.diagnostics = self.diagnostics, None
            await diagnostics.stop()
        if self._xds is not None:
            await self._xds.close()

    async def _watch(self, authority: str) -> None:
        try:
            await self.xds.watch([authority], timeout=self.resolve_timeout)
        except ControlPlaneUnavailableError as exc:
            log.warning("could not resolve %s: %s", authority, exc)
            return
        # The state may be newer than the last snapshot if the watch
        # completed between two updates; rebuild if this authority is missing.
        if not self.snapshot.knows(authority):
            self._on_update(self.xds.state)

    def resolve_blocking(self, authority: str) -> None:
        """Block until the control plane said what `authority` is (sync path)."""
        loop = self._loop
        if loop is None:
            raise MeshError("the mesh is not started: use `with Mesh(...)` or `async with`")
        if self._thread is None and _on_loop_thread(loop):
            raise MeshError(
                "the sync httpx transport was used on the event loop that runs the mesh; "
                "use mesh.async_httpx_transport() in async code"
            )
        future = asyncio.run_coroutine_threadsafe(self._watch(authority), loop)
        try:
            future.result(self.resolve_timeout + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()

    async def resolve_async(self, authority: str) -> None:
        loop = self._loop
        if loop is None:
            raise MeshError("the mesh is not started: use `with Mesh(...)` or `async with`")
        if asyncio.get_running_loop() is loop:
            await self._watch(authority)
        else:
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self._watch(authority), loop)
            )

    # -- sync lifecycle: a private loop on a daemon thread -----------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start on a background thread and wait until the control plane answered."""
        if self._loop is not None:
            raise MeshError("this mesh is already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="proxyless-mesh-xds", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result()
        except BaseException:
            self._stop_thread()
            raise

    def close(self) -> None:
        self.background.shutdown()
        loop = self._loop
        if loop is None or self._thread is None:
            return
        if self._xds is not None or self._identity is not None:
            asyncio.run_coroutine_threadsafe(self._close_xds(), loop).result(5.0)
        self._stop_thread()

    def _stop_thread(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5.0)
            loop.close()
        self._loop = self._thread = None
        self._xds = None

    # -- async lifecycle: the caller's loop ---------------------------------

    async def __aenter__(self) -> Self:
        if self._loop is not None:
            raise MeshError("this mesh is already started")
        self._loop = asyncio.get_running_loop()
        try:
            await self._start()
        except BaseException:
            self._loop = None
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.background.shutdown()
        await self._close_xds()
        self._xds = None
        self._loop = None


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _telemetry_specs(state: XdsState) -> str | None:
    """The Telemetry specs the control plane put on this workload's listeners
    (node-scoped: any listener's are every listener's)."""
    for listener in state.listeners.values():
        if listener.telemetry is not None:
            return listener.telemetry
    for inbound in state.inbound.values():
        if inbound.telemetry is not None:
            return inbound.telemetry
    return None
