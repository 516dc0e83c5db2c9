"""Two control plane replicas on one real API server: they share the CA through a
Secret (a certificate from either verifies against the other's root; a join token
minted with one's files works at the other), one holds the Lease and writes status;
SIGKILL the leader while certificates are being signed: the other keeps signing
without a failure and writes status within FAILOVER_LIMIT. A root rotated at one
replica (SIGUSR1) reaches the other's trust bundle through the Secret."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
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


def start_replica(lab: LocalMesh, kube: KubeCluster) -> Proc:
    return lab.start_control_plane(
        extra_args=[
            "--kubeconfig", str(kube.kubeconfig),
            "--kube-namespace", NS,
            "--ca-secret", f"{NS}/mesh-ca",
            "--leader-lease", LEASE,
            "--lease-duration", f"{LEASE_DURATION:g}s",
        ]
    )  # fmt: skip


@pytest.fixture
def replicas(kube: KubeCluster, tmp_path: Path) -> Any:
    meshctl = str(Path(sys.executable).parent / "meshctl")
    subprocess.run([meshctl, "install", "--kubeconfig", str(kube.kubeconfig)], check=True)
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    labs = [LocalMesh(tmp_path / "a"), LocalMesh(tmp_path / "b")]
    try:
        procs = [start_replica(lab, kube) for lab in labs]
        yield labs, procs
    finally:
        for lab in labs:
            lab.close()


async def test_two_replicas_share_the_ca_and_fail_over_status_writes(
    kube: KubeCluster, replicas: Any
) -> None:
    labs, procs = replicas
    token = labs[0].token(NS, "web")  # minted with replica a's files
    roots = [await sign(lab.ca_address, token) for lab in labs]
    assert roots[0] == roots[1]  # one CA: the Secret's

    kube.apply(vs("first", bogus=1))
    await asyncio.to_thread(wait_verdict, kube, "first", FAILOVER_LIMIT)
    lease = json.loads(kube.kubectl("get", "lease", "control-plane", "-n", NS, "-o", "json"))
    holder = lease["spec"]["holderIdentity"]
    leader = next(i for i, p in enumerate(procs) if holder.endswith(f"-{p.popen.pid}"))
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


async def test_a_root_rotated_at_one_replica_reaches_the_other(
    kube: KubeCluster, replicas: Any
) -> None:
    """SIGUSR1 at replica a: b's trust bundle gets the new root (b reads the
    Secret every 10 s) while both keep the old one signing."""
    labs, procs = replicas
    token = labs[0].token(NS, "web")

    async def bundle(lab: LocalMesh) -> list[str]:
        client = CaClient(lab.ca_address)
        try:
            signed = await client.create_certificate(
                make_csr(new_private_key(), WEB), 0, token=token
            )
        finally:
            await client.close()
        return list(signed.trust_bundle)

    before = await bundle(labs[1])
    procs[0].popen.send_signal(signal.SIGUSR1)
    start = time.monotonic()
    while len(after := await bundle(labs[1])) == len(before):
        assert time.monotonic() - start < ROTATION_LIMIT, "b never got a's new root"
        await asyncio.sleep(0.5)  # another process's state: nothing to await
    print(f"new root at the other replica {time.monotonic() - start:.1f} s after SIGUSR1")
    assert set(before) < set(after)
    assert set(after) == set(await bundle(labs[0]))
