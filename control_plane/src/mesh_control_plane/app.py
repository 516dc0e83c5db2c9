"""The running control plane: config watcher -> snapshot cache -> ADS server, plus admin.

`ControlPlane` owns the parts and their order of start and stop; `serve()`
runs one until told to stop. Config problems never stop serving: the first
load may fail (an empty config is served meanwhile) and a bad reload keeps
the last good config; both are reported through `on_config_error` and the
admin `/status`.

With `ca=CaSettings(...)` it also runs the CA's certificate-signing service on
its own gRPC port (`ca_address`, Istio's 15012 by default on the command
line): its own server so the CA can later get TLS and its own exposure
without touching ADS.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh_control_plane.admin import (
    JsonHttpServer,
    PrometheusClient,
    TextResponse,
    config_dump,
    console_pages,
    describe_view,
    graph_view,
    healthz,
    metrics_page,
    node_config_dump,
    simulate_view,
    status,
)
from mesh_control_plane.ca import (
    CaServer,
    CaSettings,
    CertificateAuthority,
    CertificateService,
    TokenAuthority,
)
from mesh_control_plane.ca.tokens import TokenError
from mesh_control_plane.config import ConfigLoadError, ConfigWatcher, MeshSettings
from mesh_control_plane.config.errors import ConfigProblem
from mesh_control_plane.config.gateway_api_status import Programmed
from mesh_control_plane.config.jwks import JwksRefresher, JwksResolver
from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.kube.ca_secret import CaSecretSync, share_ca_dir
from mesh_control_plane.kube.client import KubeConfigError, connection_from
from mesh_control_plane.kube.config_source import KubeConfigSource
from mesh_control_plane.kube.tokenreview import TokenReviewer
from mesh_control_plane.metrics import ControlPlaneMetrics
from mesh_control_plane.registry.runtime import RegistryRuntime, RegistrySettings
from mesh_control_plane.translate.incremental import IncrementalTranslator
from mesh_control_plane.translate.node import ROUTER_ID_PREFIX
from mesh_control_plane.xds import InconsistentConfigError, SnapshotCache, XdsServer
from mesh_control_plane.xds.clients import spiffe_id
from mesh_control_plane.xds.gateway_acks import programmed_gateways
from mesh_control_plane.xds.registration import RegistrationService, StreamObserver
from mesh_control_plane.xds.workers import XdsWorkers
from proxyless_mesh.security import DEFAULT_TRUST_DOMAIN, SpiffeId

log = logging.getLogger(__name__)

ConfigErrorCallback = Callable[[Sequence[str]], None]

LEASE_NAME = "proxyless-mesh-control-plane"
KUBE_SYNC_TIMEOUT = 30.0  # seconds the first load waits for the custom resources
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


@dataclass(frozen=True)
class Addresses:
    """Where the control plane listens, as clients should dial it ("HOST:PORT")."""

    xds: str
    admin: str
    ca: str = ""  # empty when the control plane runs without a CA


def split_address(address: str) -> tuple[str, int]:
    """ "HOST:PORT" (or "[V6]:PORT") -> (host, port); ValueError if malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host, int(port)


def _dialable(host: str, port: int) -> str:
    return f"{'127.0.0.1' if host in _WILDCARD_HOSTS else host}:{port}"


class ControlPlane:
    """One control plane serving one config directory."""

    def __init__(
        self,
        config_dir: Path,
        *,
        on_config_error: ConfigErrorCallback | None = None,
        poll_interval: float = 0.1,
        ca: CaSettings | None = None,
        registry: RegistrySettings | None = None,
        settings: MeshSettings | None = None,
        jwks: JwksResolver | None = None,
        prometheus_url: str = "",
        xds_workers: int = 1,
        worker_log_level: str = "WARNING",
        xds_engine: str | None = None,
    ) -> None:
        """`jwks` fetches RequestAuthentication jwksUris (timeouts, refresh period);
        `prometheus_url` is where the console's service graph reads metrics;
        `xds_workers` > 1 serves ADS from that many worker processes (workers.py)."""
        self.config_dir = Path(config_dir)
        # Trust domain: the CA's, so the SPIFFE IDs the translator expects are
        # the ones the CA signs.
        self.settings = settings or MeshSettings(
            trust_domain=ca.trust_domain if ca is not None else DEFAULT_TRUST_DOMAIN
        )
        self.ca_server: CaServer | None = None
        self._ca_sync: CaSecretSync | None = None  # roots shared by replicas
        self._ca_sync_task: asyncio.Task[None] | None = None
        verify = None
        if ca is not None:  # opened here: bad CA files fail before anything listens
            if registry is not None and registry.kubeconfig and registry.ca_secret:
                connection = connection_from(registry.kubeconfig)
                share_ca_dir(
                    connection,
                    registry.ca_secret,
                    ca.ca_dir,
                    lambda: (CertificateAuthority.open(ca), TokenAuthority.open(ca.ca_dir)),
                )
                self._ca_sync = CaSecretSync(
                    connection, registry.ca_secret, ca.ca_dir, lambda: authority.reload()
                )
            authority = CertificateAuthority.open(ca)
            tokens = TokenAuthority.open(ca.ca_dir)
            on_kube = registry is not None and bool(registry.kubeconfig)
            reviewer = self._review_token if on_kube else None
            self.ca_server = CaServer(CertificateService(authority, tokens, reviewer))
            if self._ca_sync is not None:
                self.ca_server.on_rotated = self._ca_sync.publish_soon
            verify = tokens.registration_identity
        self.registry = RegistryRuntime(registry or RegistrySettings(), verify)
        self.translator = IncrementalTranslator()
        self.cache = SnapshotCache(
            registry_builder=self.registry.hub.build, translator=self.translator
        )
        self.metrics = ControlPlaneMetrics()
        # Self-registration is served beside ADS and follows its streams.
        embedded = self.registry.embedded
        self.xds = XdsServer(
            self.cache,
            metrics=self.metrics,
            observer=StreamObserver(embedded),
            extra_handlers=[RegistrationService(embedded).handler()],
            engine=xds_engine,
        )
        self.workers: XdsWorkers | None = None
        if xds_workers > 1:
            self.workers = XdsWorkers(
                self.cache,
                xds_workers,
                observer=StreamObserver(embedded),
                log_level=worker_log_level,
                engine=xds_engine,
            )
        prometheus = PrometheusClient(prometheus_url) if prometheus_url else None
        trust_domain = ca.trust_domain if ca is not None else DEFAULT_TRUST_DOMAIN
        self.admin = JsonHttpServer(
            {
                "/healthz": healthz,
                "/status": lambda: self._status(trust_domain),
                "/metrics": self._metrics,
                "/registry": self._registry_status,
                **console_pages(),
            },
            {
                "/config_dump": lambda q: (
                    self._node_dump(q["node"]) if "node" in q else config_dump(self.cache)
                ),
                "/describe": lambda q: describe_view(self.cache, q.get("host", "")),
                "/simulate": lambda q: simulate_view(self.cache, q),
                "/api/graph": lambda q: graph_view(prometheus, q),
            },
        )
        self.config_errors: list[str] = []
        self.config_problems: list[ConfigProblem | str] = []  # the same, as found
        self.config_warnings: list[str] = []  # what loads but does not resolve yet
        self._on_config_error = on_config_error
        self._poll_interval = poll_interval
        self._watcher: ConfigWatcher | None = None
        self.kube_config: KubeConfigSource | None = None
        self._reloads: set[asyncio.Task[bool]] = set()
        if registry is not None and registry.kubeconfig and registry.kube_resources:
            connection = connection_from(registry.kubeconfig)
            self.kube_config = KubeConfigSource(
                connection, mesh_config_namespace=self.settings.root_namespace
            )
            lease = registry.leader_lease or f"{connection.namespace}/{LEASE_NAME}"
            identity = f"{socket.gethostname()}-{os.getpid()}"
            self.kube_config.elect(lease, identity, registry.lease_duration)
            self.kube_config.follow_programmed(self._programmed)
        self._rotate_as_leader()
        # A config's new DNS names are resolved before it is applied (registry/dns.py).
        self._jwks = JwksRefresher(
            jwks or JwksResolver(),
            self._apply_resolved,
            prepare=lambda c: self.registry.hub.dns.warm(c),
        )
        self._first_load = asyncio.Event()

    def _rotate_as_leader(self) -> None:
        """Replicas sharing the root through the Secret: only the Lease holder
        rotates it (by signal or schedule); the others take it from the Secret."""
        if self.ca_server is None or self._ca_sync is None:
            return
        elector = self.kube_config.elector if self.kube_config is not None else None
        if elector is None:
            raise KubeConfigError(
                "--ca-secret needs the leader Lease, which comes with the custom "
                "resources: drop --no-kube-resources"
            )
        self.ca_server.may_rotate = lambda: elector.is_leader

    async def start(
        self, xds_address: str, admin_address: str, ca_address: str = "127.0.0.1:0"
    ) -> Addresses:
        """Load the config (problems reported, not raised), then listen; returns
        the addresses once all servers accept connections."""
        xds_host, _ = split_address(xds_address)
        admin_host, admin_port = split_address(admin_address)
        await self.registry.start(lambda c: self._set_config(c, force=True))
        await self._start_watching()
        try:
            if self.workers is None:
                xds_port = await self.xds.start(xds_address)
            else:  # the workers serve ADS; the leader takes their forwarded calls
                leader = _dialable("127.0.0.1", await self.xds.start("127.0.0.1:0"))
                xds_port = await self.workers.start(xds_address, leader)
            admin_port = await self.admin.start(admin_host.strip("[]") or None, admin_port)
            ca = ""
            if self.ca_server is not None:
                ca_port = await self.ca_server.start(ca_address)
                if self._ca_sync is not None:
                    self._ca_sync_task = asyncio.create_task(self._ca_sync.run())
                ca = _dialable(split_address(ca_address)[0], ca_port)
        except OSError:
            await self.stop(grace=0)
            raise
        return Addresses(_dialable(xds_host, xds_port), _dialable(admin_host, admin_port), ca)

    async def _start_watching(self) -> None:
        """Start the watcher and wait for its first load, so the first clients
        get the directory's config rather than an empty one."""
        first_load = self._first_load
        self._jwks.start()

        def on_config(config: MeshConfig) -> None:
            # Applied by the refresher once its jwksUris are fetched (it sets first_load).
            self._jwks.submit(config)

        def on_error(error: ConfigLoadError) -> None:
            first_load.set()
            self._report(error.problems)

        kube = self.kube_config
        if kube is not None:  # the first load includes the custom resources
            await kube.start()
            try:
                await asyncio.wait_for(kube.wait_synced(), KUBE_SYNC_TIMEOUT)
            except TimeoutError:
                log.warning("Kubernetes custom resources not listed yet: starting without")
        self._watcher = ConfigWatcher(
            self.config_dir,
            on_config,
            on_error,
            poll_interval=self._poll_interval,
            settings=self.settings,
            extra=kube.documents if kube is not None else tuple,
            known=lambda: self.registry.hub.augment(MeshConfig()).service_entries,
        )
        if kube is not None:
            kube.bind(self._watcher)
        if self.registry.kubernetes is not None:
            self.registry.kubernetes.on_hosts_change = self._hosts_changed
        watching = self._watcher.start()
        loaded = asyncio.create_task(first_load.wait())
        await asyncio.wait({watching, loaded}, return_when=asyncio.FIRST_COMPLETED)
        if not loaded.done():
            loaded.cancel()
            await self._jwks.stop()
            await self._watcher.stop()  # re-raises why the watcher ended

    async def _review_token(self, token: str) -> SpiffeId:
        """A bearer token that is no join token: a Kubernetes ServiceAccount token,
        when the control plane watches Kubernetes (TokenReview), else refused."""
        kubernetes = self.registry.kubernetes
        if kubernetes is None:
            raise TokenError("ServiceAccount tokens need --kubeconfig")
        reviewer = TokenReviewer(
            kubernetes.watching, self.settings.trust_domain, kubernetes.settings.token_audience
        )
        return await reviewer.review(token)

    def _registry_status(self) -> dict[str, Any]:
        """The registry sources, how their changes were translated, and the custom
        resources' source when there is one (which are rejected, the watches,
        whether this replica leads)."""
        status = self.registry.status()
        status["Translations"] = {  # per client kind; see translate/incremental.py
            "full": self.translator.full,
            "endpoints_only": self.translator.incremental,
            "debounce_seconds": self.registry.hub.debounce,
        }
        if self.kube_config is not None:
            status["KubeConfigSource"] = self.kube_config.status()
        return status

    def _hosts_changed(self) -> None:
        """Kubernetes Services changed: reload, as references to them may resolve now."""
        if self.kube_config is not None:
            self.kube_config.poke()
        elif self._watcher is not None:
            self._reloads.add(task := asyncio.create_task(self._watcher.reload()))
            task.add_done_callback(self._reloads.discard)

    async def stop(self, grace: float = 1.0) -> None:
        """Stop watching, stop admin, then end the ADS streams within `grace` seconds."""
        if self._watcher is not None:
            watcher, self._watcher = self._watcher, None
            await watcher.stop()
        await self._jwks.stop()
        if self.kube_config is not None:
            await self.kube_config.stop()
        await self.admin.stop()
        if self._ca_sync_task is not None:
            self._ca_sync_task.cancel()
            self._ca_sync_task = None
        if self.ca_server is not None:
            await self.ca_server.stop(grace)
        await self.registry.stop()
        if self.workers is not None:
            await self.workers.stop()
        await self.xds.stop(grace)

    async def _programmed(self) -> dict[str, Programmed]:
        """Gateways' Programmed from every ADS client's ACKs, the workers' included.
        Asked every second: without Gateways nobody is asked, and only gateway
        Envoys' states are built (not every client's)."""
        if not self.cache.config.gateways:
            return {}
        own = self.xds.servicer.clients()
        clients = [c.to_status() for c in own if c.node_id.startswith(ROUTER_ID_PREFIX)]
        if self.workers is not None:
            reports = await self.workers.reports(with_clients=True)
            clients += [c for report in reports for c in report["clients"]]
        return programmed_gateways(clients)

    async def _node_dump(self, node_id: str) -> dict[str, Any]:
        """`/config_dump?node=`, the ADS workers' streams of that node included."""
        workers = self.workers
        reports = await workers.reports(False, node=node_id) if workers is not None else []
        more = [s for report in reports for s in report["node_streams"]]
        return node_config_dump(self.xds.servicer.clients(), node_id, more, len(reports))

    async def _metrics(self) -> TextResponse:
        """`/metrics`, adding up the leader's and every ADS worker's."""
        reports = await self.workers.reports(with_clients=False) if self.workers else []
        worker_kinds: Counter[str] = Counter()
        for report in reports:
            worker_kinds.update(report["kinds"])
        return metrics_page(
            self.metrics.merged(r["metrics"] for r in reports),
            self.xds.servicer.clients(),
            self.config_errors,
            self.cache.version,
            worker_kinds,
        )

    async def _status(self, trust_domain: str) -> dict[str, Any]:
        """`/status`, with the clients of every ADS worker."""
        payload = status(
            self.cache.version,
            self.xds.servicer.clients(),
            self.config_errors,
            trust_domain,
            [*self.config_warnings, *self._dns_warnings()],
            self.config_problems,
        )
        if self.workers is not None:
            payload["clients"] += [
                {**c, "spiffe": spiffe_id(trust_domain, c["namespace"], c["service_account"])}
                for report in await self.workers.reports(with_clients=True)
                for c in report["clients"]
            ]
        return payload

    def _dns_warnings(self) -> list[str]:
        return [
            f"DNS name {name} does not resolve: the ServiceEntries naming it have "
            "no endpoint for it until it does"
            for name in self.registry.hub.dns.unresolved()
        ]

    def apply_config(self, config: MeshConfig) -> None:
        """Make `config` current unless it is inconsistent (then keep the last good)."""
        try:
            self.cache.set_config(self.registry.augment(config))
        except InconsistentConfigError as exc:
            self._report(exc.problems)
            return
        self.config_errors = []
        self.config_problems = []
        warnings = [str(w) for w in config.warnings]
        if warnings != self.config_warnings:
            for warning in warnings:
                log.warning("config: %s", warning)
        self.config_warnings = warnings

    def _apply_resolved(self, config: MeshConfig, problems: Sequence[ConfigProblem]) -> None:
        """A config with its jwksUris inlined: applied even when a fetch failed
        (that rule keeps its last keys, or rejects its tokens), which is reported."""
        self._first_load.set()
        self.apply_config(config)
        if problems:
            self._report(problems)

    def _set_config(self, config: MeshConfig, *, force: bool) -> None:
        """A registry source changed: the same config now has other endpoints."""
        try:
            self.cache.set_config(config, force=force)
        except InconsistentConfigError as exc:
            self._report(exc.problems)

    def _report(self, problems: Sequence[ConfigProblem | str]) -> None:
        # Not logged here: the watcher and the cache already log what they refuse.
        self.config_problems = list(problems)
        self.config_errors = [str(p) for p in problems]
        self.metrics.config_rejected()
        if self._on_config_error is not None:
            self._on_config_error(self.config_errors)


async def serve(
    config_dir: Path,
    *,
    xds_address: str = "127.0.0.1:0",
    admin_address: str = "127.0.0.1:0",
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Addresses], None] | None = None,
    on_config_error: ConfigErrorCallback | None = None,
    grace: float = 1.0,
    ca: CaSettings | None = None,
    ca_address: str = "127.0.0.1:0",
    registry: RegistrySettings | None = None,
    settings: MeshSettings | None = None,
    prometheus_url: str = "",
    xds_workers: int = 1,
    worker_log_level: str = "WARNING",
    xds_engine: str | None = None,
) -> None:
    """Run a control plane until `stop` is set (or, without one, until this
    task is cancelled); `on_ready` gets the addresses once both listen."""
    stop = stop or asyncio.Event()
    plane = ControlPlane(
        config_dir,
        on_config_error=on_config_error,
        ca=ca,
        registry=registry,
        settings=settings,
        prometheus_url=prometheus_url,
        xds_workers=xds_workers,
        worker_log_level=worker_log_level,
        xds_engine=xds_engine,
    )
    addresses = await plane.start(xds_address, admin_address, ca_address)
    try:
        log.info("serving xDS on %s, admin on %s", addresses.xds, addresses.admin)
        if addresses.ca:
            log.info("serving the CA on %s", addresses.ca)
        if on_ready is not None:
            on_ready(addresses)
        await stop.wait()
    finally:
        await plane.stop(grace)
