"""Two control plane replicas on one real API server: they share the CA through a
Secret (a certificate from either verifies against the other's root; a join token
minted with one's files works at the other), one holds the Lease and writes status;
SIGKILL the leader while certificates are being signed: the other keeps signing
without a failure and writes status within FAILOVER_LIMIT. Only the leader rotates
the root (SIGUSR1 at the other is refused); its new root reaches the other's trust
bundle through the Secret. A gateway Envoy connected to the replica that does NOT
hold the Lease makes its Gateway Programmed=True (each replica publishes its
verdicts in a Lease of its own; the holder merges them), NoResources once it stops."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509 import verification
from gateway_support import http_gateway, running_gateway, wait_for_listener
from kube import KubeCluster
from meshlab import LocalMesh, Proc

from proxyless_mesh.security import CaClient, SpiffeId, make_csr, new_private_key

NS = "replicas"
LEASE = f"{NS}/control-plane"
LEASE_DURATION = 4.0  # seconds (--lease-duration)
FAILOVER_LIMIT = 15.0  # seconds from the kill to a status written by the survivor
WEB = SpiffeId("cluster.local", NS, "web")


def vs(name: str, **extra: Any) -> dict[str, Any]:
    route = [{"destination": {"host": "web"}}]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"hosts": ["web"], "http": [{"route": route, **extra}]},
    }


def verdict(kube: KubeCluster, name: str) -> str:
    out = kube.kubectl("get", "virtualservice", name, "-n", NS, "-o", "json")
    conditions = json.loads(out).get("status", {}).get("conditions", [])
    return str(conditions[0]["status"]) if conditions else ""


def wait_verdict(kube: KubeCluster, name: str, limit: float) -> float:
    start = time.monotonic()
    while not verdict(kube, name):
        assert time.monotonic() - start < limit, f"no status on {name} within {limit} s"
        time.sleep(0.1)
    return time.monotonic() - start


async def sign(address: str, token: str) -> x509.Certificate:
    client = CaClient(address)
    try:
        signed = await client.create_certificate(make_csr(new_private_key(), WEB), 0, token=token)
    finally:
        await client.close()
    return x509.load_pem_x509_certificate(signed.trust_bundle[0].encode())


def start_replica(lab: LocalMesh, kube: KubeCluster, secret: str, *extra: str) -> Proc:
    return lab.start_control_plane(
        extra_args=[
            "--kubeconfig", str(kube.kubeconfig),
            "--kube-namespace", NS,
            "--ca-secret", f"{NS}/{secret}",
            "--leader-lease", LEASE,
            "--lease-duration", f"{LEASE_DURATION:g}s",
            *extra,
        ]
    )  # fmt: skip


def start_replicas(
    kube: KubeCluster, tmp_path: Path, secret: str, *extra: str
) -> Iterator[tuple[list[LocalMesh], list[Proc]]]:
    """Two replicas sharing the CA Secret NS/`secret` and the Lease."""
    meshctl = str(Path(sys.executable).parent / "meshctl")
    subprocess.run([meshctl, "install", "--kubeconfig", str(kube.kubeconfig)], check=True)
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    labs = [LocalMesh(tmp_path / "a"), LocalMesh(tmp_path / "b")]
    try:
        procs = [start_replica(lab, kube, secret, *extra) for lab in labs]
        yield labs, procs
    finally:
        for lab in labs:
            lab.close()


@pytest.fixture
def replicas(kube: KubeCluster, tmp_path: Path) -> Iterator[tuple[list[LocalMesh], list[Proc]]]:
    yield from start_replicas(kube, tmp_path, "mesh-ca")


def leader_index(kube: KubeCluster, procs: list[Proc], limit: float = FAILOVER_LIMIT) -> int:
    """Which replica holds the Lease (its identity ends with its pid)."""
    start = time.monotonic()
    while True:
        out = kube.kubectl(
            "get", "lease", "control-plane", "-n", NS, "-o", "json", "--ignore-not-found"
        )
        holder = json.loads(out or "{}").get("spec", {}).get("holderIdentity", "")
        found = [i for i, p in enumerate(procs) if holder.endswith(f"-{p.popen.pid}")]
        if found:
            return found[0]
        assert time.monotonic() - start < limit, f"no replica took the Lease within {limit} s"
        time.sleep(0.2)


async def bundle(lab: LocalMesh, token: str) -> tuple[list[str], x509.Certificate]:
    """The trust bundle a workload gets from `lab`'s CA, and its new leaf."""
    client = CaClient(lab.ca_address)
    try:
        signed = await client.create_certificate(make_csr(new_private_key(), WEB), 0, token=token)
    finally:
        await client.close()
    return list(signed.trust_bundle), x509.load_pem_x509_certificate(signed.cert_chain[0].encode())


async def wait_log(proc: Proc, text: str, limit: float) -> None:
    start = time.monotonic()
    while text not in proc.log.read_text():
        assert time.monotonic() - start < limit, f"{proc.name} never logged {text!r}"
        await asyncio.sleep(0.2)  # another process's log: nothing to await


async def test_two_replicas_share_the_ca_and_fail_over_status_writes(
    kube: KubeCluster, replicas: Any
) -> None:
    labs, procs = replicas
    token = labs[0].token(NS, "web")  # minted with replica a's files
    roots = [await sign(lab.ca_address, token) for lab in labs]
    assert roots[0] == roots[1]  # one CA: the Secret's

    kube.apply(vs("first", bogus=1))
    await asyncio.to_thread(wait_verdict, kube, "first", FAILOVER_LIMIT)
    leader = leader_index(kube, procs)
    survivor = labs[1 - leader]

    signed, stop = 0, asyncio.Event()

    async def keep_signing() -> None:
        nonlocal signed
        while not stop.is_set():
            await sign(survivor.ca_address, token)  # a failure fails the test
            signed += 1

    signer = asyncio.create_task(keep_signing())
    try:
        procs[leader].popen.send_signal(signal.SIGKILL)  # no clean release of the Lease
        killed = time.monotonic()
        kube.apply(vs("second", bogus=1))
        took = await asyncio.to_thread(wait_verdict, kube, "second", FAILOVER_LIMIT)
        print(f"status written by the new leader {time.monotonic() - killed:.1f} s after the kill")
        assert took <= FAILOVER_LIMIT
    finally:
        stop.set()
        await signer
    assert signed > 0
    assert verdict(kube, "second") == "False"


ROTATION_LIMIT = 30.0  # seconds: the Secret is read every 10 s


async def test_only_the_leader_rotates_and_the_other_takes_its_root(
    kube: KubeCluster, replicas: Any
) -> None:
    """SIGUSR1 at the replica without the Lease is refused; at the leader, the
    other replica's trust bundle gets the new root (it reads the Secret every
    10 s) while both keep the old one."""
    labs, procs = replicas
    token = labs[0].token(NS, "web")
    leader = leader_index(kube, procs)
    follower = 1 - leader
    before, _ = await bundle(labs[follower], token)

    procs[follower].popen.send_signal(signal.SIGUSR1)
    await wait_log(procs[follower], "refused: this replica is not the leader", ROTATION_LIMIT)
    assert (await bundle(labs[leader], token))[0] == before, "the follower rotated nothing"

    procs[leader].popen.send_signal(signal.SIGUSR1)
    start = time.monotonic()
    while len(after := (await bundle(labs[follower], token))[0]) == len(before):
        assert time.monotonic() - start < ROTATION_LIMIT, "the follower never got the new root"
        await asyncio.sleep(0.5)  # another process's state: nothing to await
    print(f"new root at the other replica {time.monotonic() - start:.1f} s after SIGUSR1")
    assert set(before) < set(after)
    assert set(after) == set((await bundle(labs[leader], token))[0])


# Scheduled rotation: 10 s leaves, a 45 s root replaced when 25 s are left, so
# the leader makes the successor about 20 s after the root was made.
SCHEDULE = ("--leaf-ttl", "10s", "--root-ttl", "45s", "--root-rotation-lead", "25s")


@pytest.fixture
def rotating_replicas(
    kube: KubeCluster, tmp_path: Path
) -> Iterator[tuple[list[LocalMesh], list[Proc]]]:
    yield from start_replicas(kube, tmp_path, "mesh-ca-scheduled", *SCHEDULE)


async def test_the_leader_rotates_on_schedule_with_overlapping_trust(
    kube: KubeCluster, rotating_replicas: Any
) -> None:
    """The root nears its end: the Lease holder makes its successor, the other
    replica takes it from the Secret without rotating itself, and a leaf issued
    before the rotation still verifies against the bundle served after it."""
    labs, procs = rotating_replicas
    token = labs[0].token(NS, "web")
    leader = leader_index(kube, procs)
    follower = 1 - leader
    before, old_leaf = await bundle(labs[follower], token)
    assert len(before) == 1

    start = time.monotonic()
    while True:  # old_leaf: the follower's last leaf before it took the new root
        after, leaf = await bundle(labs[follower], token)
        if len(after) > 1:
            break
        old_leaf = leaf
        assert time.monotonic() - start < 45.0, "no scheduled rotation reached the follower"
        await asyncio.sleep(0.5)  # another process's state: nothing to await
    print(f"scheduled root at the follower {time.monotonic() - start:.1f} s into the test")
    assert after[0] == before[0] and len(after) == 2, "old and new root trusted together"
    assert "scheduled root rotation" in procs[leader].log.read_text()
    assert "scheduled root rotation" not in procs[follower].log.read_text()

    roots = [x509.load_pem_x509_certificate(pem.encode()) for pem in after]
    verifier = verification.PolicyBuilder().store(verification.Store(roots)).build_client_verifier()
    assert old_leaf.issuer == roots[0].subject
    verifier.verify(old_leaf, [])  # a peer's pre-rotation leaf: trusted still


GATEWAY_API = "gateway.networking.k8s.io"
VERDICTS_LABEL = "proxyless-mesh.io/gateway-verdicts"


def programmed(kube: KubeCluster, wanted: tuple[str, str], limit: float = 20.0) -> dict[str, Any]:
    """The Gateway `web`'s Programmed condition once it is `wanted` (status, reason)."""
    deadline = time.monotonic() + limit
    while True:
        out = kube.kubectl("get", f"gateway.{GATEWAY_API}", "web", "-n", NS, "-o", "json")
        conditions = json.loads(out).get("status", {}).get("conditions") or []
        found = [c for c in conditions if c["type"] == "Programmed"]
        if found and (found[0]["status"], found[0]["reason"]) == wanted:
            return dict(found[0])
        assert time.monotonic() < deadline, f"Programmed not {wanted} within {limit} s: {found}"
        time.sleep(0.2)


def test_a_gateway_envoy_at_the_other_replica_counts_for_programmed(
    kube: KubeCluster, replicas: tuple[list[LocalMesh], list[Proc]]
) -> None:
    labs, procs = replicas
    # The verdicts Lease of a replica that died: it counts until it expires (its
    # leaseDurationSeconds without a renewal, long enough to be seen on a busy
    # machine), then the Lease holder deletes it.
    dead = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "gateway-verdicts-dead",
            "namespace": NS,
            "labels": {VERDICTS_LABEL: "true"},
            "annotations": {VERDICTS_LABEL: json.dumps({f"{NS}/web": ["False", "Invalid", "x"]})},
        },
        "spec": {"holderIdentity": "dead", "leaseDurationSeconds": 8},
    }
    kube.apply(http_gateway("web", NS), dead)
    leader = leader_index(kube, procs)
    other = 1 - leader
    programmed(kube, ("False", "Invalid"))
    programmed(kube, ("False", "NoResources"))
    deadline = time.monotonic() + FAILOVER_LIMIT
    while kube.kubectl("get", "lease", "gateway-verdicts-dead", "-n", NS, "--ignore-not-found"):
        assert time.monotonic() < deadline, "the expired verdicts Lease was not deleted"
        time.sleep(0.2)
    label = f"{GATEWAY_API}/gateway-name=web"
    with running_gateway(labs[other], "web", NS, labels=(label,)) as admin:
        wait_for_listener(admin, "0.0.0.0_80")
        condition = programmed(kube, ("True", "Programmed"))
        assert condition["message"] == "its Envoy ACKed the current listeners and routes"
        # Each replica's verdicts are in a Lease of its own, the Envoy's in the other's.
        out = kube.kubectl("get", "lease", "-n", NS, "-l", VERDICTS_LABEL, "-o", "json")
        holders = {x["spec"]["holderIdentity"]: x for x in json.loads(out)["items"]}
        (mine,) = [v for k, v in holders.items() if k.endswith(f"-{procs[other].popen.pid}")]
        annotations = mine["metadata"]["annotations"]
        assert json.loads(annotations[VERDICTS_LABEL])[f"{NS}/web"][0] == "True"
        assert any(k.endswith(f"-{procs[leader].popen.pid}") for k in holders)
    # Its Envoy gone: no replica has one.
    programmed(kube, ("False", "NoResources"))
    # The Lease holder never changed: it was its merge of the other's verdicts.
    assert leader_index(kube, procs) == leader
