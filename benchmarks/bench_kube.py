"""The control plane on a real Kubernetes API server at scale (issue 22).

A fresh etcd + kube-apiserver + kube-controller-manager (tests/kube.py, the
binaries of `make kube-tools`); SERVICES Services without selectors in one
namespace, each with one EndpointSlice of ENDPOINTS_PER_SERVICE ready endpoints
(10.x addresses: data only, nothing is sent to them). Then:
- initial sync: from starting `meshctl control-plane --kubeconfig` until its
  registry watches have listed everything (admin /registry), and until CLIENTS raw
  ADS clients (benchmarks/xds_load_clients.py) all have their endpoints;
- RSS of the control plane after that;
- CHURN endpoint changes per second (a random endpoint of a random Service turned
  ready / not ready: a PATCH of its EndpointSlice) for the whole measurement, and
  among them MEASURED changes of the Service the clients follow: from the PATCH
  until every client has the new endpoints (p50 / p99 / max);
- the control plane's load on the API server: its watch connections and its
  requests per second during the churn (list + watch + lease, from its own counters).
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from common import Verdict, md_table, rss_kb, verdict_table
from cp_scale import LoadClients
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from meshlab import BIN, LocalMesh, start_process

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kube import KubeCluster

NS = "scale"
PORT = 80
SERVICES, ENDPOINTS_PER_SERVICE, CLIENTS, CHURN, MEASURED = 1000, 10, 100, 50, 30
QUICK = (100, 10, 20, 50, 10)


def _slice(i: int, ready: list[bool]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc-{i:04d}-1",
            "namespace": NS,
            "labels": {
                "kubernetes.io/service-name": f"svc-{i:04d}",
                "endpointslice.kubernetes.io/managed-by": "bench",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [f"10.{100 + i // 250}.{i % 250}.{j + 1}"], "conditions": {"ready": r}}
            for j, r in enumerate(ready)
        ],
    }


def _populate(cluster: KubeCluster, services: int, per: int) -> float:
    start = time.monotonic()
    with cluster.client() as api:
        api.post("/api/v1/namespaces", json={"metadata": {"name": NS}}).raise_for_status()
        for i in range(services):
            service = {
                "metadata": {"name": f"svc-{i:04d}"},
                "spec": {"ports": [{"name": "http", "port": PORT}]},
            }
            api.post(f"/api/v1/namespaces/{NS}/services", json=service).raise_for_status()
            api.post(
                f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices",
                json=_slice(i, [True] * per),
            ).raise_for_status()
    return time.monotonic() - start


class Churn:
    """CHURN endpoint flips per second over services 1..n-1, in a thread; `flip(0)`
    is a measured one (its time is taken by the caller)."""

    def __init__(self, cluster: KubeCluster, services: int, per: int, rate: int) -> None:
        self.api = cluster.client()
        self.services, self.rate = services, rate
        self.ready = {i: [True] * per for i in range(services)}
        self.stop = threading.Event()
        self.count = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def flip(self, i: int) -> None:
        with self.lock:
            ready = self.ready[i]
            j = random.randrange(len(ready))
            ready[j] = not ready[j]
            body = {"endpoints": _slice(i, ready)["endpoints"]}
            response = self.api.patch(
                f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/svc-{i:04d}-1",
                json=body,
                headers={"Content-Type": "application/merge-patch+json"},
            )
            response.raise_for_status()
            self.count += 1

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.flip(random.randrange(1, self.services))
            next_at += 1 / self.rate
            time.sleep(max(0.0, next_at - time.monotonic()))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.api.close()


def _registry(lab: LocalMesh, source: str = "KubernetesRegistry") -> dict[str, Any]:
    reply: dict[str, Any] = httpx.get(f"http://{lab.admin_address}/registry").json()
    return dict(reply.get(source, {}))


def _requests(registry: dict[str, Any]) -> int:
    return sum(int(w["lists"]) + int(w["errors"]) for w in registry["watches"].values())


def run(quick: bool = False) -> str:
    services, per, clients_n, churn_rate, measured = (
        QUICK if quick else (SERVICES, ENDPOINTS_PER_SERVICE, CLIENTS, CHURN, MEASURED)
    )
    with tempfile.TemporaryDirectory(prefix="mesh-kube-bench-") as tmp:
        cluster = KubeCluster(Path(tmp) / "kube")
        (Path(tmp) / "kube").mkdir()
        lab = LocalMesh(Path(tmp) / "lab")
        clients: LoadClients | None = None
        churn: Churn | None = None
        try:
            cluster.start()
            subprocess.run(
                [str(BIN / "meshctl"), "install", "--kubeconfig", str(cluster.kubeconfig)],
                check=True,
                capture_output=True,
            )
            print(f"  kube: populating {services} Services ...", file=sys.stderr, flush=True)
            populate_s = _populate(cluster, services, per)
            started = time.monotonic()
            cp = start_process(
                "control-plane",
                [
                    str(BIN / "meshctl"), "control-plane",
                    "--config-dir", str(lab.config_dir),
                    "--xds-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0",
                    "--kubeconfig", str(cluster.kubeconfig), "--kube-namespace", NS,
                    "--log-level", "WARNING",
                ],
                lab.workdir,
                timeout=120,
            )  # fmt: skip
            lab.control_plane = cp
            lab.procs.append(cp)
            while not all(w["synced"] for w in _registry(lab)["watches"].values()):
                time.sleep(0.05)
            listed_s = time.monotonic() - started
            clients = LoadClients(
                lab, clients_n, 120.0, authority=f"svc-0000.{NS}.svc.cluster.local:{PORT}",
                changed="eds",
            )  # fmt: skip
            answers = clients.ask_all("go")
            synced = sum(int(a["synced"]) for a in answers)
            clients_s = max(float(a["last"]) for a in answers) - started
            rss_mb = rss_kb(cp.popen.pid) / 1024
            churn = Churn(cluster, services, per, churn_rate)
            before = _requests(_registry(lab))
            translations = _registry(lab, "Translations")
            churn.thread.start()
            t0 = time.monotonic()
            hist = HdrHistogram(1, 600_000_000, 3)
            acked = clients_n
            for _ in range(measured):
                clients.ask_all("arm")
                written = time.monotonic()
                churn.flip(0)
                acks = [float(t) for a in clients.ask_all("wait") for t in a["acks"]]
                acked = min(acked, len(acks))
                for t in acks:
                    hist.record_value(max(1, int((t - written) * 1e6)))
                time.sleep(random.uniform(0.1, 0.3))
            elapsed = time.monotonic() - t0
            changes = churn.count
            churn.close()
            churn = None
            registry = _registry(lab)
            after = _registry(lab, "Translations")
            full, partial = (after[k] - translations[k] for k in ("full", "endpoints_only"))
            rate = (_requests(registry) - before) / elapsed
            watches = len(registry["watches"]) + 9  # + the Istio kinds' watches (KubeConfigSource)
        finally:
            if churn is not None:
                churn.close()
            if clients is not None:
                clients.close()
            lab.close()
            cluster.close()
    p99_ms = hist.get_value_at_percentile(99) / 1e3
    rows = [
        [
            "API objects",
            f"{services:,} Services, {services * per:,} endpoints ({populate_s:.0f} s to create)",
        ],
        ["initial sync: watches listed", f"{listed_s:.1f} s"],
        [
            "initial sync: all clients have endpoints",
            f"{clients_s:.1f} s ({synced}/{clients_n} clients)",
        ],
        ["control plane RSS after sync", f"{rss_mb:.0f} MB"],
        [
            "endpoint changes during the measurement",
            f"{changes} in {elapsed:.0f} s ({changes / elapsed:.0f}/s)",
        ],
        [
            "endpoint change -> every client (p50 / p99 / max)",
            f"{hist.get_value_at_percentile(50) / 1e3:.0f} / {p99_ms:.0f} / "
            f"{hist.get_max_value() / 1e3:.0f} ms ({measured} changes x {acked} clients)",
        ],
        [
            "translations during the churn (per client kind): full / endpoints only",
            f"{full} / {partial} (debounce {after['debounce_seconds'] * 1000:.0f} ms)",
        ],
        ["API server load: watch connections", f"{watches} (+1 Lease renewal every ~2 s)"],
        ["API server load: list/retry requests per second during churn", f"{rate:.2f}"],
    ]
    verdicts = [
        Verdict("initial sync < 10 s", f"{clients_s:.1f} s", clients_s < 10),
        Verdict("control plane RSS < 300 MB", f"{rss_mb:.0f} MB", rss_mb < 300),
        Verdict("endpoint change to all clients p99 < 1 s", f"{p99_ms:.0f} ms", p99_ms < 1000),
    ]
    return md_table(["what", "measured"], rows) + "\n\n" + verdict_table(verdicts)
