"""Chaos scenario: certificate rotation, leaf and root, with short lifetimes.

mTLS on both sides: two meshed servers (mtls_backend.py processes: uvicorn
with the mesh's rotating server credentials, PeerAuthentication STRICT) behind a
MESH_INTERNAL ServiceEntry whose instances name a serviceAccount, so the
client's transport does auto mTLS and checks the server's SPIFFE ID. The
control plane signs leaves of `3 * hold` seconds (at least 3 s), renewed at
40-50 % of their life. Under load, `kill -USR1` rotates the root: the new root
joins the bundle, signs one leaf lifetime later, and the old root leaves one
more lifetime after that. The scenario lasts until every workload holds a leaf
from the new root and a bundle without the old one. Every 5th request closes
its connection, so handshakes with fresh certificates happen all along."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from cryptography import x509
from harness import HOST, PORT, Result, ScenarioCheckFailed, endpoint_health, measured
from meshlab import LocalMesh, Proc, start_process
from replicas import wait_until

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.security import Credentials

SCRIPT = Path(__file__).with_name("mtls_backend.py")

SERVER_SA = "chaos"


def mtls_service_entry(ports: list[int]) -> str:
    """HOST served by `ports`, instances running as SERVER_SA: auto mTLS."""
    return json.dumps(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": "chaos", "namespace": "default"},
            "spec": {
                "hosts": [HOST],
                "ports": [{"number": PORT, "name": "http", "protocol": "HTTP"}],
                "resolution": "STATIC",
                "location": "MESH_INTERNAL",
                "endpoints": [
                    {"address": "127.0.0.1", "ports": {"http": p}, "serviceAccount": SERVER_SA}
                    for p in ports
                ],
            },
        }
    )


def start_servers(lab: LocalMesh, count: int) -> list[tuple[Proc, Path]]:
    """`count` mtls_backend.py processes as SERVER_SA: (process, status file)."""
    token = lab.token("default", SERVER_SA)
    path = lab.bootstrap("chaos-server", "default", SERVER_SA, token=token)
    base = json.loads(Bootstrap.from_file(path).to_json())
    out = []
    for i in range(count):
        name = f"chaos-server-{i}"
        path = lab.workdir / f"bootstrap-{name}.json"
        path.write_text(json.dumps({**base, "node": {**base["node"], "id": name}}))
        status = lab.workdir / f"{name}.status.json"
        argv = [sys.executable, str(SCRIPT), "--bootstrap", str(path)]
        proc = start_process(name, [*argv, "--status-file", str(status)], lab.workdir)
        lab.procs.append(proc)
        out.append((proc, status))
    return out


def subjects(creds: Credentials) -> tuple[set[str], str]:
    roots = {x509.load_der_x509_certificate(r.der).subject.rfc4514_string() for r in creds.roots}
    return roots, x509.load_der_x509_certificate(creds.leaf.der).issuer.rfc4514_string()


class Rotations:
    """What each workload went through: the client's rotations as its mesh
    reports them, the servers' from their status files."""

    def __init__(self, client: Mesh, servers: list[Path]) -> None:
        manager = client.identity_manager
        if manager is None:
            raise ScenarioCheckFailed("the client has no workload identity")
        self.client = client
        self.client_rotations = 0
        self.servers = servers
        self.first_roots, _ = subjects(client.credentials())
        manager.add_listener(self._count)

    def _count(self, _: Credentials) -> None:
        self.client_rotations += 1

    def views(self) -> dict[str, tuple[int, set[str], str]]:
        """name -> (rotations, root subjects, leaf issuer subject)."""
        roots, issuer = subjects(self.client.credentials())
        out = {"client": (self.client_rotations, roots, issuer)}
        for path in self.servers:
            status = json.loads(path.read_text())
            out[path.stem] = (status["rotations"], set(status["roots"]), status["leaf_issuer"])
        return out

    def root_rotated(self) -> bool:
        """Every workload's leaf comes from a new root and the old roots are gone."""
        return all(
            roots and not roots & self.first_roots and issuer in roots
            for _, roots, issuer in self.views().values()
        )


def certificate_rotation(lab: LocalMesh, rate: float, hold: float, results: list[Result]) -> None:
    leaf_ttl = max(3.0, 3 * hold)
    cp = lab.start_control_plane(extra_args=["--leaf-ttl", f"{leaf_ttl:g}s"])
    servers = start_servers(lab, 2)
    ports = [proc.ready["port"] for proc, _ in servers]
    lab.write_config("chaos.yaml", mtls_service_entry(ports))
    token = lab.token("default", "client")
    client = Mesh(
        Bootstrap.from_file(lab.bootstrap("chaos-client", "default", "client", token=token)),
        preload=[f"{HOST}:{PORT}"],
    )
    with client:
        wait_until(lambda: set(endpoint_health(client)) == set(ports), 15, "the endpoints")
        rotations = Rotations(client, [status for _, status in servers])
        name = "cert rotation (leaf + root)"
        with measured(name, client, rate, hold, results, close_every=5):
            os.kill(cp.popen.pid, signal.SIGUSR1)
            wait_until(rotations.root_rotated, 3 * leaf_ttl + 10, "the root rotation")
            time.sleep(hold / 2)
        renewals = {name: view[0] for name, view in rotations.views().items()}
        # At least: a renewal with the new bundle, one signed by the new root, one
        # after the old root left.
        if min(renewals.values()) < 3:
            raise ScenarioCheckFailed(f"too few rotations: {renewals}")
