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

Inbound (`serve_inbound`, the policies and TLS mode per port, the ports
the server helpers announce, `withdraw`): see _mesh_inbound.py. Identity
(the certificate, `credentials()`, `health()`): see _mesh_identity.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import httpx

from proxyless_mesh._background import Background
from proxyless_mesh._joining import Joining
from proxyless_mesh._mesh_identity import MeshIdentity
from proxyless_mesh._mesh_inbound import MeshInbound, on_loop_thread
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.errors import (
    ControlPlaneUnavailableError,
    MeshError,
)
from proxyless_mesh.integrations import AsyncMeshTransport, MeshTransport
from proxyless_mesh.model import (
    OUTBOUND_POLICY_LISTENER,
    CircuitBreakers,
    Cluster,
)
from proxyless_mesh.resilience import ClusterResources, PassthroughBreaker
from proxyless_mesh.runtime import ALLOW_ANY, REGISTRY_ONLY, MeshSnapshot
from proxyless_mesh.security import (
    CertificateCache,
    IdentityConfig,
    IdentityManager,
)
from proxyless_mesh.snapshot import build_snapshot
from proxyless_mesh.telemetry import (
    NO_POLICY,
    ClusterCounts,
    ClusterLimitMetrics,
    Telemetry,
    TelemetryConfig,
    TelemetrySpecError,
    metrics_meter,
    policy_from_specs,
)
from proxyless_mesh.xds_client import XdsClient, XdsState, config_cache_path

if TYPE_CHECKING:  # gRPC is loaded only by an application that uses it (issue 25)
    import grpc
    import grpc.aio

    from proxyless_mesh.diagnostics import DiagnosticsServer
    from proxyless_mesh.registration import Registrar

log = logging.getLogger("proxyless_mesh")
_T = TypeVar("_T")

# With a cached config, entering waits at most this long for the control plane
# (less when every server refused at once), then serves from the cache.
WARM_START_WAIT = 1.0


class Mesh(MeshIdentity, MeshInbound):
    """The mesh inside this process.

    Args:
        bootstrap: where the control plane is and who this workload is.
        ready_timeout: seconds to wait, on entering, for the control plane.
        resolve_timeout: seconds a request to a never-seen host waits for the
            control plane to say whether it is a mesh service.
        preload: authorities (`host:port`) to fetch on start, so their first
            request does not wait for a round trip to the control plane.
        outbound_policy: `ALLOW_ANY` passes non-mesh hosts through untouched;
            `REGISTRY_ONLY` refuses them with OutsideMeshError. The mesh
            default: a Sidecar's `outboundTrafficPolicy` sent by the control
            plane overrides it for the workloads it applies to.
        admin_address: `HOST:PORT` (port 0 picks one) to serve CSDS and
            Istio's metrics (`/stats/prometheus`) on while started (see
            `proxyless_mesh.diagnostics`); None (default): no admin
            endpoint. The bound address is `mesh.diagnostics.address`.
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
        passthrough_breaker: per-host circuit breakers for the hosts outside the
            mesh that ALLOW_ANY passes through (see resilience's
            PassthroughBreaker); None (default): not guarded.
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
        passthrough_breaker: PassthroughBreaker | None = None,
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
        self.passthrough_breaker = passthrough_breaker
        if passthrough_breaker is not None:
            passthrough_breaker.use_meter(metrics_meter(self.telemetry.config))
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

        def clusters() -> list[tuple[str, ClusterCounts]]:
            return [(n, r.counts()) for n, r in list(self._resources.items())]

        if self.telemetry.stats is not None:  # read on a scrape of /stats/prometheus
            self.telemetry.stats.clusters = clusters
        meter = metrics_meter(self.telemetry.config) if self.telemetry.metrics else None
        if meter is not None:  # read when the SDK's reader collects
            ClusterLimitMetrics(meter, clusters)
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
        from proxyless_mesh.integrations import MeshChannel, native_channel

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
        from proxyless_mesh.integrations import AioMeshChannel, native_channel

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
        from proxyless_mesh.integrations import normalize_target

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
                from proxyless_mesh.diagnostics import DiagnosticsServer

                self.diagnostics = DiagnosticsServer.for_client(
                    self._xds, self.bootstrap, lambda: self.telemetry.prometheus_text()
                )
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

    async def _close_xds(self) -> None:
        """Stop the admin endpoint (if any), the xDS client, then the identity
        (its renewal task and its channel to the CA)."""
        try:
            await self._close_xds_only()
        finally:
            manager, self._identity = self._identity, None
            if manager is not None:
                await manager.close()

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
            # With the listener carrying the Sidecar's outboundTrafficPolicy, if
            # any: an authority found absent is then decided by it.
            watched = [authority, OUTBOUND_POLICY_LISTENER]
            await self.xds.watch(watched, timeout=self.resolve_timeout)
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
        if self._thread is None and on_loop_thread(loop):
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
