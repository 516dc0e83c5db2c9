"""Leader election's decisions (kube/lease.py) over httpx's MockTransport standing
for the Lease API, with an injected clock: a replica takes a missing or released
Lease, leaves a fresh one alone, takes one whose holder stopped renewing for the
lease duration as observed on its own clock, and loses a write race (409). The
real thing, two replicas on a real API server: tests/integration/test_kube_replicas.py."""

from __future__ import annotations

import json
from typing import Any

import httpx
from mesh_control_plane.kube.client import KubeConnection
from mesh_control_plane.kube.lease import LeaderElector
from mesh_control_plane.kube.reflector import Reflectors

PATH = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/cp"


class LeaseApi:
    """One Lease with resourceVersion checks, as the API server keeps it."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.conflict_next = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return (
                httpx.Response(404) if self.lease is None else httpx.Response(200, json=self.lease)
            )
        body = json.loads(request.content)
        if request.method == "POST" and self.lease is not None:
            return httpx.Response(409)
        if request.method == "PUT":
            sent = body["metadata"].get("resourceVersion")
            if (
                self.conflict_next
                or self.lease is None
                or sent != self.lease["metadata"]["resourceVersion"]
            ):
                self.conflict_next = False
                return httpx.Response(409)
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        self.lease = body
        return httpx.Response(200, json=body)

    def hold(self, holder: str, renew: str = "t0") -> None:
        self.version += 1
        self.lease = {
            "metadata": {"name": "cp", "namespace": "ns", "resourceVersion": str(self.version)},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 10, "renewTime": renew},
        }


async def elector(api: LeaseApi, now: list[float]) -> tuple[LeaderElector, list[bool]]:
    watching = Reflectors(KubeConnection("https://k", False), ())
    watching.client = httpx.AsyncClient(
        transport=httpx.MockTransport(api.handle), base_url="https://k"
    )
    changes: list[bool] = []
    me = LeaderElector(
        watching, "ns/cp", "me", duration=10, on_change=changes.append, clock=lambda: now[0]
    )
    return me, changes


async def test_takes_a_missing_lease_and_renews_it() -> None:
    api, now = LeaseApi(), [100.0]
    me, changes = await elector(api, now)
    assert await me._try() is True
    assert api.lease is not None and api.lease["spec"]["holderIdentity"] == "me"
    first = api.lease["spec"]["acquireTime"]
    assert await me._try() is True  # renewal keeps the acquire time
    assert api.lease["spec"]["acquireTime"] == first
    assert api.lease["spec"]["leaseTransitions"] == 0
    assert changes == []  # _try decides; run() reports


async def test_leaves_a_fresh_lease_and_takes_it_once_its_holder_is_silent() -> None:
    api, now = LeaseApi(), [100.0]
    api.hold("other", renew="t1")
    me, _ = await elector(api, now)
    assert await me._try() is False
    now[0] += 9  # less than the duration since this replica saw a renewal
    assert await me._try() is False
    api.hold("other", renew="t2")  # the holder renews: the clock starts again
    now[0] += 9
    assert await me._try() is False
    now[0] += 10.5  # silent for longer than the duration
    assert await me._try() is True
    assert api.lease is not None and api.lease["spec"]["holderIdentity"] == "me"
    assert api.lease["spec"]["leaseTransitions"] == 1


async def test_takes_a_released_lease_at_once_and_loses_a_race() -> None:
    api, now = LeaseApi(), [100.0]
    api.hold("")
    me, _ = await elector(api, now)
    api.conflict_next = True  # another replica wrote between our read and write
    assert await me._try() is False
    assert await me._try() is True


async def test_release_hands_the_lease_back() -> None:
    api, now = LeaseApi(), [100.0]
    me, changes = await elector(api, now)
    me._set(await me._try())
    assert changes == [True]
    await me.release()
    assert api.lease is not None and api.lease["spec"]["holderIdentity"] == ""
    assert changes == [True, False]
