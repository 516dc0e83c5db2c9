"""Leadership among control plane replicas: a `coordination.k8s.io/v1` Lease, the
way client-go's leader election uses it.

Every replica serves xDS and signs; only the leader writes (custom resources'
status, Events). A replica takes the Lease when it does not exist, when it is
released (no holder), or when its holder has not renewed it for
`leaseDurationSeconds` as observed on this replica's own clock (not by comparing
timestamps across machines). Writes use the Lease's resourceVersion, so two
replicas cannot both win. The leader renews every `retry` seconds; one that could
not renew for two thirds of the duration stops acting as leader before anyone else
may take over. A clean stop releases the Lease, so a successor need not wait.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from mesh_control_plane.kube.reflector import Reflectors

log = logging.getLogger(__name__)

__all__ = ["LeaderElector"]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        watching: Reflectors,
        lease: str,
        identity: str,
        *,
        duration: float = 15.0,
        retry: float = 2.0,
        on_change: Callable[[bool], None] = lambda leader: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        namespace, _, name = lease.partition("/")
        self.watching = watching  # its client
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self.collection = self.path.rsplit("/", 1)[0]
        self.name, self.namespace = name, namespace
        self.identity = identity
        self.duration = duration
        self.retry = retry
        self.on_change = on_change
        self.clock = clock
        self.is_leader = False
        self.holder = ""
        self._observed: tuple[str, str] = ("", "")  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._renewed_at = 0.0

    async def run(self) -> None:
        """Forever: try to take or renew the Lease every `retry` seconds."""
        while True:
            try:
                self._set(await self._try())
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                log.warning("leader election %s: %r", self.path, exc)
                if self.is_leader and self.clock() - self._renewed_at > self.duration * 2 / 3:
                    self._set(False)  # could not renew in time: stop before a successor starts
            await asyncio.sleep(self.retry)

    async def release(self) -> None:
        """Give the Lease up (a clean stop), so a successor takes it at once."""
        client = self.watching.client
        if not self.is_leader or client is None:
            return
        try:
            response = await client.get(self.path)
            lease = response.json()
            if lease["spec"].get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                await client.put(self.path, json=lease)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            log.warning("leader election %s: not released (%r)", self.path, exc)
        self._set(False)

    def _set(self, leader: bool) -> None:
        if leader:
            self._renewed_at = self.clock()
        if leader != self.is_leader:
            self.is_leader = leader
            log.warning(
                "%s %s the leader (%s)",
                self.identity,
                "is" if leader else "is no longer",
                self.path,
            )
            self.on_change(leader)

    async def _try(self) -> bool:
        client = self.watching.client
        if client is None:
            return False
        response = await client.get(self.path)
        if response.status_code == 404:
            spec = self._spec(transitions=0)
            body = {"metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
            created = await client.post(self.collection, json=body)
            if created.status_code == 409:
                return False
            created.raise_for_status()
            self.holder = self.identity
            return True
        response.raise_for_status()
        lease: dict[str, Any] = response.json()
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        seen = (holder, str(spec.get("renewTime", "")))
        if seen != self._observed:
            self._observed, self._observed_at = seen, self.clock()
        self.holder = holder
        expired = self.clock() - self._observed_at > float(spec.get("leaseDurationSeconds", 15))
        if holder and holder != self.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions", 0)) + (holder != self.identity)
        new = self._spec(transitions)
        if holder == self.identity:
            new["acquireTime"] = spec.get("acquireTime", new["acquireTime"])
        lease["spec"] = new
        updated = await client.put(self.path, json=lease)  # carries resourceVersion
        if updated.status_code == 409:
            return False  # another replica wrote first
        updated.raise_for_status()
        self.holder = self.identity
        return True

    def _spec(self, transitions: int) -> dict[str, Any]:
        now = _now()
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": round(self.duration),
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }
