"""Every replica's gateway verdicts, so the Lease holder's `Programmed` counts the
gateway Envoys connected to any replica, not only to itself.

Each replica publishes its own verdicts (per Gateway, the worst ACK verdict of the
Envoys connected to it, xds/gateway_acks.py) in a `coordination.k8s.io/v1` Lease of
its own in the leader Lease's namespace, labelled `LABEL`, the verdicts as JSON in
the annotation `ANNOTATION`, renewed every third of its duration and at each
change. The merge (`PeerVerdicts`) takes its own verdicts and every other replica's
unexpired ones, the worst verdict winning; NoResources only when no replica has an
Envoy of that Gateway. A peer's Lease expires when its renewTime has not changed for
its `leaseDurationSeconds` as observed on this replica's own clock, as leader
election does (kube/lease.py): no timestamps compared across machines. A clean stop
deletes the replica's own Lease; the Lease holder deletes the expired ones of
replicas that died.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from mesh_control_plane.config.gateway_api_status import Programmed, worst
from mesh_control_plane.kube.reflector import Reflectors

log = logging.getLogger(__name__)

__all__ = ["ANNOTATION", "LABEL", "PeerVerdicts", "VerdictPublisher", "decode", "encode"]

LABEL = "proxyless-mesh.io/gateway-verdicts"
ANNOTATION = "proxyless-mesh.io/gateway-verdicts"


def encode(verdicts: Mapping[str, Programmed]) -> str:
    return json.dumps(
        {ref: [v.status, v.reason, v.message] for ref, v in sorted(verdicts.items())},
        separators=(",", ":"),
    )


def decode(text: str) -> dict[str, Programmed]:
    """A peer's annotation; one that does not parse counts as no verdicts."""
    try:
        raw = json.loads(text)
        return {str(ref): Programmed(str(s), str(r), str(m)) for ref, (s, r, m) in raw.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("gateway verdicts: unreadable annotation %r (%r)", text[:200], exc)
        return {}


class PeerVerdicts:
    """The merge of this replica's verdicts with its peers' unexpired Leases (pure)."""

    def __init__(self, own_name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.own_name = own_name
        self.clock = clock
        self._observed: dict[str, tuple[str, float]] = {}  # name -> (renewTime, seen at)
        self.expired: dict[str, str] = {}  # name -> resourceVersion, of the last merge

    def merge(
        self, own: Mapping[str, Programmed], leases: Iterable[Mapping[str, Any]]
    ) -> dict[str, Programmed]:
        merged = dict(own)
        observed: dict[str, tuple[str, float]] = {}
        self.expired = {}
        now = self.clock()
        for lease in leases:
            meta = lease.get("metadata") or {}
            name = str(meta.get("name", ""))
            if name == self.own_name:
                continue
            spec = lease.get("spec") or {}
            renewed = str(spec.get("renewTime", ""))
            previous = self._observed.get(name)
            seen_at = previous[1] if previous is not None and previous[0] == renewed else now
            observed[name] = (renewed, seen_at)
            if now - seen_at > float(spec.get("leaseDurationSeconds") or 0):
                # Its replica stopped renewing: its Envoys are not known.
                self.expired[name] = str(meta.get("resourceVersion", ""))
                continue
            worst(decode(str((meta.get("annotations") or {}).get(ANNOTATION, "{}"))), merged)
        self._observed = observed
        return merged


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_name(identity: str) -> str:
    """A valid object name for `identity` (hostname-pid)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", identity.lower()).strip("-")
    return f"gateway-verdicts-{cleaned}"[:63].rstrip("-")


class VerdictPublisher:
    """Publishes this replica's verdicts and reads its peers' (`exchange`)."""

    def __init__(
        self,
        watching: Reflectors,
        namespace: str,
        identity: str,
        *,
        duration: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.watching = watching  # its client
        self.name = lease_name(identity)
        self.identity = identity
        self.collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.duration = duration
        self.clock = clock
        self.peers = PeerVerdicts(self.name, clock)
        self._leases: list[dict[str, Any]] = []  # last listed
        self._published: tuple[str, float] | None = None  # (annotation, when)
        self.errors = 0  # failed exchanges (admin /registry)

    async def exchange(
        self, own: Mapping[str, Programmed], collect: bool = False
    ) -> dict[str, Programmed]:
        """Publish `own` (when changed or a third of the duration old) and return
        it merged with the peers' unexpired verdicts; `collect` (the Lease holder
        only) deletes the expired Leases of replicas that died. A failed call is
        logged; the last listed peers keep counting until they expire."""
        client = self.watching.client
        if client is not None:
            try:
                response = await client.get(self.collection, params={"labelSelector": LABEL})
                response.raise_for_status()
                self._leases = list(response.json().get("items") or [])
                await self._publish(client, encode(own))
                if collect:
                    await self._collect(client)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                self.errors += 1
                log.warning("gateway verdicts %s: %r", self.collection, exc)
        return self.peers.merge(own, self._leases)

    async def _collect(self, client: httpx.AsyncClient) -> None:
        """Delete the Leases the previous merge found expired, unless renewed since
        (the resourceVersion precondition)."""
        for name, version in self.peers.expired.items():
            body = {"preconditions": {"resourceVersion": version}}
            response = await client.request("DELETE", f"{self.collection}/{name}", json=body)
            if response.status_code not in (404, 409):
                response.raise_for_status()

    async def _publish(self, client: httpx.AsyncClient, annotation: str) -> None:
        now = self.clock()
        if self._published is not None:
            text, when = self._published
            if text == annotation and now - when < self.duration / 3:
                return
        mine = [x for x in self._leases if x.get("metadata", {}).get("name") == self.name]
        meta: dict[str, Any] = {
            "name": self.name,
            "labels": {LABEL: "true"},
            "annotations": {ANNOTATION: annotation},
        }
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "renewTime": _now(),
        }
        if mine:
            meta["resourceVersion"] = mine[0]["metadata"]["resourceVersion"]
            response = await client.put(
                f"{self.collection}/{self.name}", json={"metadata": meta, "spec": spec}
            )
        else:
            response = await client.post(self.collection, json={"metadata": meta, "spec": spec})
        response.raise_for_status()
        self._published = (annotation, now)

    def status(self) -> dict[str, Any]:
        return {"lease": self.name, "published": self._published is not None, "errors": self.errors}

    async def withdraw(self) -> None:
        """Delete this replica's Lease (a clean stop): its Envoys are gone with it."""
        client = self.watching.client
        if client is None or self._published is None:
            return
        try:
            response = await client.delete(f"{self.collection}/{self.name}")
            if response.status_code != 404:
                response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("gateway verdicts %s: not withdrawn (%r)", self.name, exc)
        self._published = None
