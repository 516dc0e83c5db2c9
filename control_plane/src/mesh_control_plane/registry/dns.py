"""ServiceEntry `resolution: DNS` / `DNS_ROUND_ROBIN`: endpoint names -> addresses.

Istio sends Envoy a STRICT_DNS (DNS) or LOGICAL_DNS (DNS_ROUND_ROBIN) cluster
and Envoy resolves the names itself. Proxyless clients (grpcio, the library)
accept only EDS with addresses, so here the control plane resolves and every
client gets the same EDS: DNS makes one instance per address a name resolves
to, DNS_ROUND_ROBIN one instance, the first address (what LOGICAL_DNS
connects to). IPv4 addresses are preferred when a name has both (Envoy's
default lookup family, V4_PREFERRED). Names are re-resolved every
REFRESH_SECONDS (Envoy's default dns_refresh_rate) and a change re-applies the
config. The difference from Istio: the names resolve as the control plane's
resolver sees them, not each client's.

A name seen for the first time is resolved before the config that
introduces it is published, as Envoy warms a DNS cluster (its first answer,
or a failed lookup, completes the cluster's initialization) before using it:
the control plane awaits `warm(config)` (at most WARM_TIMEOUT seconds, the
resolver's timeout) before it applies a new config. A name that does not
answer in time is published with no instance (requests to it fail 'no
healthy upstream' until it resolves), logged, and listed by `unresolved()`
for the admin `/status`. Offline (no event loop: tools, tests) `resolve`
answers a new name on the spot.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from types import MappingProxyType

from mesh_control_plane.config.model import MeshConfig, WorkloadEndpoint

log = logging.getLogger(__name__)

REFRESH_SECONDS = 5.0
WARM_TIMEOUT = 5.0  # seconds; c-ares' (Envoy's resolver) default query timeout
Lookup = Callable[[str], Awaitable[tuple[str, ...]]]
Registry = Mapping[str, tuple[WorkloadEndpoint, ...]]


def prefer_v4(addresses: list[str]) -> tuple[str, ...]:
    unique = list(dict.fromkeys(addresses))
    v4 = [a for a in unique if ipaddress.ip_address(a).version == 4]
    return tuple(v4 or unique)


def lookup_now(name: str) -> tuple[str, ...]:
    try:
        found = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError:
        return ()
    return prefer_v4([str(info[4][0]) for info in found])


async def lookup_async(name: str) -> tuple[str, ...]:
    loop = asyncio.get_running_loop()
    try:
        found = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError:
        return ()
    return prefer_v4([str(info[4][0]) for info in found])


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def dns_names(config: MeshConfig) -> set[str]:
    """The names (not IPs) of the endpoints of `config`'s DNS entries."""
    return {
        endpoint.address
        for entry in config.service_entries
        if entry.resolution in ("DNS", "DNS_ROUND_ROBIN")
        for endpoint in entry.endpoints
        if not _is_ip(endpoint.address)
    }


class DnsResolver:
    """Names of DNS ServiceEntries' endpoints -> their current addresses."""

    def __init__(
        self,
        on_change: Callable[[], None] | None = None,
        *,
        lookup: Lookup = lookup_async,
        lookup_sync: Callable[[str], tuple[str, ...]] = lookup_now,
        refresh: float = REFRESH_SECONDS,
        warm_timeout: float = WARM_TIMEOUT,
    ) -> None:
        self._on_change = on_change
        self._lookup = lookup
        self._lookup_sync = lookup_sync
        self._refresh = refresh
        self._warm_timeout = warm_timeout
        self._answers: dict[str, tuple[str, ...]] = {}
        self._task: asyncio.Task[None] | None = None

    def resolve(self, config: MeshConfig, registry: Registry) -> Registry:
        """`registry` with each DNS entry's named instances replaced by one per
        address (DNS) or by the first address (DNS_ROUND_ROBIN)."""
        dns = {h: e.resolution for e in config.service_entries if e.endpoints for h in e.hosts}
        dns = {h: r for h, r in dns.items() if r in ("DNS", "DNS_ROUND_ROBIN")}
        names = {i.address for h in dns for i in registry.get(h, ()) if not _is_ip(i.address)}
        if not names:
            return registry
        self._learn(names)
        resolved = dict(registry)
        for host, resolution in dns.items():
            instances: list[WorkloadEndpoint] = []
            for instance in registry.get(host, ()):
                if _is_ip(instance.address):
                    instances.append(instance)
                    continue
                addresses = self._answers.get(instance.address, ())
                if resolution == "DNS_ROUND_ROBIN":
                    addresses = addresses[:1]
                instances.extend(replace(instance, address=a) for a in addresses)
            resolved[host] = tuple(instances)
        return MappingProxyType(resolved)

    async def warm(self, config: MeshConfig) -> None:
        """Resolve the names `config` introduces, together, each within the
        warm timeout; a name with no answer is kept with none (and followed)."""
        new = sorted(dns_names(config) - set(self._answers))
        if not new:
            return
        answers = await asyncio.gather(*(self._first_answer(name) for name in new))
        for name, answer in zip(new, answers, strict=True):
            self._answers[name] = answer
            if answer:
                log.info("DNS %s -> %s", name, ", ".join(answer))
            else:
                log.warning(
                    "DNS %s did not resolve within %gs: its ServiceEntry is published "
                    "with no endpoint for it until it does",
                    name,
                    self._warm_timeout,
                )

    async def _first_answer(self, name: str) -> tuple[str, ...]:
        try:
            return await asyncio.wait_for(self._lookup(name), self._warm_timeout)
        except TimeoutError:
            return ()

    def answers(self) -> dict[str, list[str]]:
        """Each name in use -> its addresses now (for the admin `/registry`)."""
        return {name: list(self._answers[name]) for name in sorted(self._answers)}

    def unresolved(self) -> list[str]:
        """The names in use that have no address now."""
        return sorted(name for name, answer in self._answers.items() if not answer)

    def _learn(self, names: set[str]) -> None:
        for stale in set(self._answers) - names:
            del self._answers[stale]
        new = names - set(self._answers)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # offline: answer now
            for name in new:
                self._answers[name] = self._lookup_sync(name)
            return
        for name in new:
            self._answers[name] = ()
        if new or self._task is None:
            if self._task is not None:
                self._task.cancel()
            self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        """Resolve every known name now, then every `refresh` seconds; tell
        the hub when an answer changed."""
        while True:
            changed = False
            for name in list(self._answers):
                answer = await self._lookup(name)
                if answer != self._answers.get(name):
                    log.info("DNS %s -> %s", name, ", ".join(answer) or "no address")
                    self._answers[name] = answer
                    changed = True
            if changed and self._on_change is not None:
                self._on_change()
            await asyncio.sleep(self._refresh)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
