"""The Consul registry backend: the mesh takes its services from a Consul catalog.

It follows Consul's documented blocking queries: `/v1/catalog/services` for the
service list and one `/v1/health/service/<name>?passing` per service, each with
`index=<last X-Consul-Index>&wait=<wait>`. An index that goes backwards (Consul
restored, a new leader with a lower index) resets the watch to 0, as Consul's docs
require. Errors back off exponentially (with jitter) and never empty the mesh: the
last known instances stay, the backend says loudly it is stale (a WARNING log, the
`errors` counter and `stale` flag in `status()`, served at the admin `/registry`).

Mapping: service `web` -> host `web.service.consul` (suffix configurable), unless a
ServiceEntry selects it (`workloadSelector: {consul.service: web}`), which then
decides hosts and ports (the per-service override). Instance tags `k=v` and service
meta become labels (so `version=v2` works in subsets), plus `consul.service=<name>`;
locality is region = Service.Locality.Region, node meta `region`, else the
datacenter; zone = Service.Locality.Zone or node meta `zone`; subzone = node meta
`subzone`. Only passing instances are endpoints (the query asks `passing`, and every
check returned is checked again).

httpx (async) rather than py-consul here: a blocking query must be cancellable on
the control plane's event loop, and py-consul's client is synchronous.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from mesh_control_plane.config.model import (
    MeshConfig,
    Meta,
    ServiceEntry,
    ServicePort,
    WorkloadEndpoint,
)
from mesh_control_plane.registry.hub import DynamicInstance

log = logging.getLogger(__name__)

__all__ = ["SERVICE_LABEL", "ConsulRegistry", "ConsulSettings", "instance_from_entry"]

SERVICE_LABEL = "consul.service"
_PORT = "consul"  # the one port name of a Consul instance


@dataclass(frozen=True)
class ConsulSettings:
    address: str = "http://127.0.0.1:8500"  # scheme://host:port; https for TLS
    token: str = ""  # ACL token, sent as X-Consul-Token
    datacenter: str = ""
    host_suffix: str = ".service.consul"
    service_port: int = 80  # the port clients dial on the synthesized host
    protocol: str = "HTTP"  # of synthesized ServiceEntries (service meta `protocol` wins)
    namespace: str = "default"  # where synthesized ServiceEntries live
    wait: str = "30s"  # blocking query wait
    ca_file: str = ""  # TLS: trust this CA for Consul's certificate
    cert_file: str = ""  # TLS: client certificate (mutual TLS to Consul)
    key_file: str = ""
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    services: Sequence[str] = field(default_factory=tuple)  # empty: every service


class ConsulRegistry:
    """Watches Consul; a `RegistrySource` for the hub."""

    def __init__(
        self, settings: ConsulSettings, *, on_change: Callable[[], None] = lambda: None
    ) -> None:
        self.settings = settings
        self.on_change = on_change
        self._services: dict[str, tuple[str, ...]] = {}  # name -> tags
        self._instances: dict[str, tuple[WorkloadEndpoint, ...]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._main: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._failing: set[str] = set()  # which watches are in error now
        self.errors = 0  # metric: failed Consul queries since start
        self.last_error = ""
        self.synced = asyncio.Event()  # set after the first full read

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        verify: ssl.SSLContext | bool = True
        if s.ca_file or s.cert_file:
            verify = ssl.create_default_context(cafile=s.ca_file or None)
            if s.cert_file:
                verify.load_cert_chain(s.cert_file, s.key_file or None)
        headers = {"X-Consul-Token": s.token} if s.token else {}
        self._client = httpx.AsyncClient(
            base_url=s.address, headers=headers, verify=verify, timeout=None
        )
        self._main = asyncio.create_task(self._watch_catalog(), name="consul-catalog")

    async def stop(self) -> None:
        tasks = [t for t in (self._main, *self._watchers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._watchers.clear()
        self._main = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- RegistrySource -----------------------------------------------------------

    def instances(self) -> Sequence[DynamicInstance]:
        return [
            DynamicInstance(None, e, any_port=e.ports[_PORT])
            for eps in self._instances.values()
            for e in eps
        ]

    def service_entries(self, config: MeshConfig) -> Sequence[ServiceEntry]:
        s = self.settings
        selected = {
            entry.workload_selector.get(SERVICE_LABEL)
            for entry in config.service_entries
            if entry.workload_selector
        }
        declared = {h for entry in config.service_entries for h in entry.hosts}
        out = []
        for name in sorted(self._services):
            host = name + s.host_suffix
            if name in selected or host in declared:
                continue
            meta = next((e.labels for e in self._instances.get(name, ())), {})
            protocol = meta.get("protocol", s.protocol).upper()
            out.append(
                ServiceEntry(
                    meta=Meta("ServiceEntry", f"consul-{name}", s.namespace, "<consul>"),
                    hosts=(host,),
                    ports=(ServicePort(s.service_port, protocol, _PORT),),
                    workload_selector={SERVICE_LABEL: name},
                )
            )
        return out

    def status(self) -> Mapping[str, Any]:
        return {
            "address": self.settings.address,
            "services": len(self._services),
            "instances": sum(len(v) for v in self._instances.values()),
            "stale": bool(self._failing),
            "errors": self.errors,
            "last_error": self.last_error,
        }

    # -- watching -----------------------------------------------------------------

    async def _watch_catalog(self) -> None:
        async for services in self._blocking("/v1/catalog/services", "catalog"):
            wanted = self.settings.services
            names = {
                n: tuple(tags or ())
                for n, tags in services.items()
                if n != "consul" and (not wanted or n in wanted)
            }
            for gone in set(self._watchers) - set(names):
                self._watchers.pop(gone).cancel()
                self._instances.pop(gone, None)
            for name in set(names) - set(self._watchers):
                self._watchers[name] = asyncio.create_task(
                    self._watch_service(name), name=f"consul-service {name}"
                )
            changed = names != self._services
            self._services = names
            if not names:
                self.synced.set()
            if changed:
                self.on_change()

    async def _watch_service(self, name: str) -> None:
        path = f"/v1/health/service/{name}"
        async for entries in self._blocking(path, name, passing="1"):
            endpoints = tuple(
                sorted(
                    (e for e in (instance_from_entry(x) for x in entries) if e is not None),
                    key=lambda e: (e.address, tuple(sorted(e.ports.items()))),
                )
            )
            if endpoints != self._instances.get(name):
                self._instances[name] = endpoints
                self.on_change()
            if set(self._instances) >= set(self._services):
                self.synced.set()

    async def _blocking(self, path: str, what: str, **params: str) -> Any:
        """Yield each new result of a blocking query, forever, with backoff on errors."""
        s = self.settings
        index = 0
        delay = s.backoff_initial
        while True:
            query = dict(params)
            if s.datacenter:
                query["dc"] = s.datacenter
            if index:
                query.update(index=str(index), wait=s.wait)
            try:
                if self._client is None:
                    raise RuntimeError("ConsulRegistry.start() was not called")
                response = await self._client.get(path, params=query)
                response.raise_for_status()
                body = response.json()
                new_index = int(response.headers.get("X-Consul-Index", "0"))
            except (httpx.HTTPError, ValueError) as exc:
                self._failed(what, exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, s.backoff_max)
                continue
            delay = s.backoff_initial
            if what in self._failing:
                self._failing.discard(what)
                log.warning("Consul %s: reachable again (%s)", what, s.address)
            if new_index < index or new_index <= 0:
                # Consul's rule: an index that goes backwards (or is not positive)
                # resets the watch, else we would block on an index never reached.
                index = 0
            elif new_index == index:
                continue  # the wait expired with nothing new
            else:
                index = new_index
            yield body

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        self.last_error = f"{what}: {exc!r}"
        if what not in self._failing:
            self._failing.add(what)
            kept = sum(len(v) for v in self._instances.values())
            log.warning(
                "Consul at %s unreachable or failing (%s: %s): keeping the %d last known "
                "instances; retrying with backoff",
                self.settings.address,
                what,
                exc,
                kept,
            )


def instance_from_entry(entry: Mapping[str, Any]) -> WorkloadEndpoint | None:
    """One `/v1/health/service` entry -> an instance, or None when not passing."""
    node = entry.get("Node") or {}
    service = entry.get("Service") or {}
    checks = entry.get("Checks") or []
    if any(c.get("Status") != "passing" for c in checks):
        return None
    address = service.get("Address") or node.get("Address")
    port = service.get("Port")
    if not address or not isinstance(port, int) or port <= 0:
        return None
    name = str(service.get("Service", ""))
    labels: dict[str, str] = {}
    for tag in service.get("Tags") or ():
        key, sep, value = str(tag).partition("=")
        if sep:
            labels[key] = value
    labels.update({str(k): str(v) for k, v in (service.get("Meta") or {}).items()})
    labels[SERVICE_LABEL] = name
    node_meta = node.get("Meta") or {}
    svc_locality = service.get("Locality") or {}
    region = svc_locality.get("Region") or node_meta.get("region") or node.get("Datacenter", "")
    zone = svc_locality.get("Zone") or node_meta.get("zone", "")
    subzone = node_meta.get("subzone", "")
    locality = "/".join((region, zone, subzone)).rstrip("/")
    weights = service.get("Weights") or {}
    weight = weights.get("Passing", 1)
    return WorkloadEndpoint(
        address=str(address),
        ports={_PORT: port},
        labels=labels,
        locality=locality,
        weight=weight if isinstance(weight, int) and weight > 0 else 1,
        service_account=labels.get("serviceAccount", ""),
    )
