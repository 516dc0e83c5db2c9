"""Istio configuration from Kubernetes custom resources (the CRDs of kube/crds.py),
fed to the same strict loader as the config directory.

Each resource is checked on its own as it arrives (the loader's document parser):
a valid one becomes that resource's last good version; a rejected one leaves its
last good version serving (none if it never had one) and gets an `Accepted=False`
condition whose message names the field path, plus a Warning Event. Then the
config directory and every last good resource are loaded together, with the
cross-resource checks; that load failing keeps the whole last good configuration,
as a bad file does.

Precedence: the config directory wins. A resource (kind, namespace, name) defined
by a file and by Kubernetes is the file's; the custom resource is marked
`Accepted=False, reason OverriddenByFile`. Files are what an operator set on this
control plane's own machine, on purpose; Kubernetes is shared.

Namespaces are watched too, only for their labels (Gateway API listeners pick
route namespaces by them, `allowedRoutes.namespaces.from: Selector`): a
relabelled Namespace reloads, so attachment is evaluated again; no status is
written on a Namespace.

A Gateway's Programmed condition follows its Envoys' ACKs (`follow_programmed`):
polled every second, written when it changes. With leader election, every
replica publishes its own verdicts and the Lease holder merges them all
(kube/gateway_verdicts.py), so an Envoy connected to any replica counts.

Status writes need `patch` on `<kind>/status` and `create` on Events (see the RBAC in
the README); a failed write is logged and retried at the next change.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from mesh_control_plane.config import ConfigProblem, ConfigWatcher, MeshConfig
from mesh_control_plane.config.documents import Document, parse_document
from mesh_control_plane.config.gateway_api_status import Programmed
from mesh_control_plane.config.model import DEFAULT_ROOT_NAMESPACE
from mesh_control_plane.config.parse_mesh_config import MESH_CONFIG_MAP
from mesh_control_plane.config.schema import Problems
from mesh_control_plane.kube.client import KubeConnection
from mesh_control_plane.kube.crds import ACCEPTED, FIELD_MANAGER, KINDS
from mesh_control_plane.kube.gateway_status import gateway_api_status
from mesh_control_plane.kube.gateway_verdicts import VerdictPublisher
from mesh_control_plane.kube.lease import LeaderElector
from mesh_control_plane.kube.reflector import Reflector, Reflectors

log = logging.getLogger(__name__)

__all__ = ["FILE_PREFIX", "KubeConfigSource"]

FILE_PREFIX = "kubernetes:"  # the "file" a custom resource's problems are reported in
_KEPT_META = ("name", "namespace", "labels", "annotations", "generation", "uid")


def _keep(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the loader reads (and the status writer needs): not status, not
    resourceVersion, so a status write does not look like a change."""
    meta = obj.get("metadata") or {}
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {k: meta[k] for k in _KEPT_META if k in meta},
        "spec": obj.get("spec"),
    }


def _keep_mesh_config(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """Istio's mesh config, the ConfigMap `istio` (a list's items carry no kind)."""
    meta = obj.get("metadata") or {}
    if meta.get("name") != MESH_CONFIG_MAP:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {k: meta[k] for k in _KEPT_META if k in meta},
        "data": obj.get("data"),
    }


def _keep_namespace(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A Namespace's name and labels: what allowedRoutes selectors read."""
    meta = obj.get("metadata") or {}
    kept = {k: meta[k] for k in ("name", "labels") if k in meta}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": kept}


def _verdict(problems: Sequence[ConfigProblem]) -> str:
    return "; ".join(f"{p.field}: {p.message}" if p.field else p.message for p in problems)


class KubeConfigSource:
    """Watches every supported kind's custom resources; `documents()` are the last
    good ones, for the loader; `report()` writes each resource's verdict."""

    def __init__(
        self,
        connection: KubeConnection,
        *,
        mesh_config_namespace: str = DEFAULT_ROOT_NAMESPACE,
        on_change: Callable[[], None] = lambda: None,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
    ) -> None:
        self.connection = connection
        self.on_change = on_change
        self.reflectors = {
            kind: Reflector(
                info.path(),
                _keep,
                self._changed,
                backoff_initial=backoff_initial,
                backoff_max=backoff_max,
            )
            for kind, info in KINDS.items()
        }
        # The mesh config (extension providers) lives in the root namespace's ConfigMap.
        self.reflectors["ConfigMap"] = Reflector(
            f"/api/v1/namespaces/{mesh_config_namespace}/configmaps",
            _keep_mesh_config,
            self._changed,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
        )
        # Namespaces' labels: Gateway API listeners pick namespaces by them
        # (allowedRoutes `from: Selector`); a change re-evaluates attachment.
        self.reflectors["Namespace"] = Reflector(
            "/api/v1/namespaces",
            _keep_namespace,
            self._changed,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
        )
        self._good: dict[str, Document] = {}  # "Kind/ns/name" -> last good document
        self._current: dict[str, dict[str, Any]] = {}
        self._problems: dict[str, tuple[ConfigProblem, ...]] = {}
        self._written: dict[str, tuple[Any, ...]] = {}  # the verdict in its status now
        self._documents: tuple[Document, ...] = ()
        self.watching = Reflectors(connection, tuple(self.reflectors.values()))
        self.elector: LeaderElector | None = None
        self.verdicts: VerdictPublisher | None = None
        self._electing: asyncio.Task[None] | None = None
        self._watcher: ConfigWatcher | None = None
        self._reloading: asyncio.Task[None] | None = None
        self._dirty = False
        self._report_due = False
        self._programmed_source: Callable[[], Awaitable[Mapping[str, Programmed]]] | None = None
        self._programmed: Mapping[str, Programmed] = {}
        self._programmed_interval: float | None = None  # None: not followed
        self._following: asyncio.Task[None] | None = None

    def bind(self, watcher: ConfigWatcher) -> None:
        """Reload `watcher` (whose `extra` is `documents`) after each change, and
        write the verdicts of each reload; starts with one now."""
        self._watcher = watcher
        self._schedule()

    def poke(self) -> None:
        """Reload soon although no custom resource changed (a Service appeared)."""
        self._schedule()

    def _schedule(self, reload: bool = True) -> None:
        """Reload and report (or only report again) in the one task that
        does both, so verdicts are written in the order they were reached."""
        self._dirty = self._dirty or reload
        self._report_due = True
        if self._watcher is not None and (self._reloading is None or self._reloading.done()):
            self._reloading = asyncio.create_task(self._reload(), name="kube config reload")

    async def _reload(self) -> None:
        while self._report_due and self._watcher is not None:
            if self._dirty:
                self._dirty = False
                await self._watcher.reload()
            self._report_due = False
            errors = self._watcher.last_errors
            await self.report(None if errors else self._watcher.last_good, errors)

    def elect(self, lease: str, identity: str, duration: float = 15.0) -> None:
        """Write status only while leader of `lease` (namespace/name) among replicas."""
        self.elector = LeaderElector(
            self.watching,
            lease,
            identity,
            duration=duration,
            retry=max(0.5, duration / 7),
            on_change=self._leadership,
        )
        namespace = lease.partition("/")[0]
        self.verdicts = VerdictPublisher(self.watching, namespace, identity, duration=duration)

    def follow_programmed(
        self, source: Callable[[], Awaitable[Mapping[str, Programmed]]], interval: float = 1.0
    ) -> None:
        """Take Gateways' Programmed verdicts from `source` (the gateway Envoys'
        ACKs, xds/gateway_acks.py), checked every `interval` seconds once started."""
        self._programmed_source = source
        self._programmed_interval = interval

    async def _follow(self) -> None:
        while self._programmed_interval is not None:
            await asyncio.sleep(self._programmed_interval)
            if self._programmed_source is None:
                return
            now = await self._programmed_source()
            if self.verdicts is not None:
                leader = self.elector is not None and self.elector.is_leader
                now = await self.verdicts.exchange(now, collect=leader)
            if now != self._programmed:
                self._programmed = now
                self._schedule(reload=False)

    def _leadership(self, leader: bool) -> None:
        if leader:  # the previous leader's verdicts may be stale: write all again
            self._written.clear()
            self._schedule()

    async def start(self) -> None:
        await self.watching.start()
        if self.elector is not None:
            self._electing = asyncio.create_task(self.elector.run(), name="kube leader election")
        if self._programmed_interval is not None:
            self._following = asyncio.create_task(self._follow(), name="gateway Programmed")

    async def wait_synced(self) -> None:
        await self.watching.wait_synced()

    async def stop(self) -> None:
        self._watcher = None
        for task in (self._electing, self._following):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        if self.verdicts is not None:
            await self.verdicts.withdraw()
        if self.elector is not None:
            await self.elector.release()
        await self.watching.stop(*([self._reloading] if self._reloading is not None else []))

    def documents(self) -> tuple[Document, ...]:
        """The last good version of every custom resource (immutable: the loader
        reads it from a worker thread)."""
        return self._documents

    def status(self) -> dict[str, Any]:
        elector = self.elector
        return {
            "resources": len(self._current),
            "rejected": sorted(k for k, v in self._problems.items() if v),
            "leader": elector.is_leader if elector is not None else None,
            "lease_holder": elector.holder if elector is not None else "",
            "gateway_verdicts": self.verdicts.status() if self.verdicts is not None else None,
            "watches": {k: r.status() for k, r in self.reflectors.items()},
        }

    # -- validation -----------------------------------------------------------------

    def _changed(self) -> None:
        current = {
            f"{kind}/{key}": obj
            for kind, reflector in self.reflectors.items()
            for key, obj in reflector.items.items()
        }
        for key, obj in current.items():
            if self._current.get(key) == obj:
                continue
            doc = Document(FILE_PREFIX + key, obj)
            sink: list[ConfigProblem] = []
            parse_document(Problems(sink, doc.file), doc)
            self._problems[key] = tuple(sink)
            if not sink:
                self._good[key] = doc
        for gone in set(self._current) - set(current):
            self._good.pop(gone, None)
            self._problems.pop(gone, None)
            self._written.pop(gone, None)
        self._current = current
        self._documents = tuple(self._good[k] for k in sorted(self._good))
        self._schedule()
        self.on_change()

    # -- status ---------------------------------------------------------------------

    async def report(self, config: MeshConfig | None, problems: Sequence[ConfigProblem]) -> None:
        """After a load (`config` None when it failed with `problems`): write the
        verdict of every resource whose verdict changed."""
        if self.elector is not None and not self.elector.is_leader:
            return  # the leader writes; this replica serves
        by_file: dict[str, list[ConfigProblem]] = {}
        for problem in problems:
            by_file.setdefault(problem.file, []).append(problem)
        files = _file_defined(config) if config is not None else {}
        for key, obj in list(self._current.items()):
            if key.startswith(("ConfigMap/", "Namespace/")):
                continue  # no status written on these: their problems are in `status`
            own = self._problems.get(key, ())
            if own:
                verdict = ("False", "Invalid", _verdict(own))
            elif key in files:
                verdict = (
                    "False",
                    "OverriddenByFile",
                    f"{files[key]} in the config directory defines it too: the file wins",
                )
            elif by_file.get(FILE_PREFIX + key):
                verdict = ("False", "Invalid", _verdict(by_file[FILE_PREFIX + key]))
            elif config is None:
                verdict = (
                    "True",
                    "Pending",
                    "valid, but the configuration as a whole does not load (another "
                    "resource's problem, see `meshctl status`): the last good one serves",
                )
            else:
                verdict = ("True", "Accepted", "valid; served by the control plane")
            generation = obj["metadata"].get("generation", 0)
            own_shape = None  # the Gateway API's own status shape, for its accepted kinds
            if config is not None and verdict[1] == "Accepted":
                own_shape = gateway_api_status(obj, config, generation, _now(), self._programmed)
            written = (generation, *verdict, repr(_timeless(own_shape)))
            if self._written.get(key) == written:
                continue
            if await self._write(key, obj, generation, *verdict, body=own_shape):
                self._written[key] = written

    async def _write(
        self,
        key: str,
        obj: Mapping[str, Any],
        generation: int,
        status: str,
        reason: str,
        message: str,
        body: dict[str, Any] | None = None,
    ) -> bool:
        client = self.watching.client
        if client is None:
            return False
        kind, namespace, name = key.split("/", 2)
        now = _now()
        condition = {
            "type": ACCEPTED,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": now,
        }
        path = KINDS[kind].path(namespace, name) + "/status"
        status_body = body if body is not None else {"conditions": [condition]}
        body = {"status": status_body}
        try:
            response = await client.patch(
                path,
                json=body,
                headers={"Content-Type": "application/merge-patch+json"},
                params={"fieldManager": FIELD_MANAGER},
            )
            response.raise_for_status()
            if status == "False":
                await self._event(client, obj, namespace, reason, message, now)
        except httpx.HTTPError as exc:
            log.warning(
                "Kubernetes %s: status not written (%r); retried at the next change", key, exc
            )
            return False
        return True

    async def _event(
        self,
        client: httpx.AsyncClient,
        obj: Mapping[str, Any],
        namespace: str,
        reason: str,
        message: str,
        now: str,
    ) -> None:
        meta = obj["metadata"]
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": meta["name"],
                "namespace": namespace,
                "uid": meta.get("uid", ""),
            },
            "reason": "Rejected" if reason == "Invalid" else reason,
            "message": message,
            "type": "Warning",
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        response = await client.post(f"/api/v1/namespaces/{namespace}/events", json=event)
        response.raise_for_status()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _timeless(status: Any) -> Any:
    """`status` without its timestamps: what decides whether it changed."""
    if isinstance(status, dict):
        return {k: _timeless(v) for k, v in status.items() if k != "lastTransitionTime"}
    if isinstance(status, list):
        return [_timeless(v) for v in status]
    return status


def _file_defined(config: MeshConfig) -> dict[str, str]:
    """ "Kind/ns/name" -> file, for resources the config directory defines."""
    out = {}
    for group in (
        config.service_entries,
        config.workload_entries,
        config.destination_rules,
        config.virtual_services,
        config.peer_authentications,
        config.authorization_policies,
        config.request_authentications,
        config.workload_groups,
        config.telemetries,
        config.passthrough_entries,
        config.sidecars,
    ):
        for resource in group:
            meta = getattr(resource, "meta", None)
            if meta is not None and not meta.file.startswith(FILE_PREFIX):
                out[f"{meta.kind}/{meta.namespace}/{meta.name}"] = meta.file
    return out
