"""`make demo`: a canary rollout through the in-process mesh, start to finish,
then the control plane's web console.

Starts a control plane (with its CA, and a mesh-wide PeerAuthentication
STRICT) and three backends inside the mesh (reviews v1, reviews v2, ratings
v1, which fails 5 % of its requests with 503) on 127.0.0.1, then a client
that uses httpx through the mesh. Every workload holds an identity from the
CA, so every call is mutual TLS (the console's graph shows the locks). The
VirtualService for reviews moves 90/10 -> 50/50 -> 0/100 while traffic
flows; the demo prints who served each
phase and how long each change took to reach the client.

Every side reports Istio's standard metrics. When Debian's `prometheus` is
installed (`make tools`), the demo starts one scraping them and the control
plane, and gives its URL to the control plane (`--prometheus-url`), whose
admin port serves the console: the service graph, each client's config
status, and `simulate` as a form. The demo prints the console's URL; on a
terminal it keeps traffic flowing until Enter or Ctrl-C, otherwise it
finishes by itself. `--screenshot FILE` saves the graph page as PNG (Debian's
chromium, headless; how docs/console.png was made).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from meshlab import BIN, LocalMesh, service_entry
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server
from prometheus_lab import NOT_INSTALLED, PrometheusError, PrometheusServer

from proxyless_mesh import Mesh
from proxyless_mesh.telemetry import TelemetryConfig

REVIEWS = "reviews.default.mesh"
RATINGS = "ratings.default.mesh"
PORT = 8080
REQUESTS_PER_PHASE = 400
GRAPH_EDGES = 5  # client -> reviews, -> ratings; reviews -> v1, v2; ratings -> v1
#: Mesh-wide (root namespace, no selector): every workload's server demands mTLS.
STRICT_MESH = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""


def in_mesh(lab: LocalMesh, service: str, version: str) -> list[str]:
    """backend.py flags: Istio's metrics, and serving inside the mesh as
    `<service>-<version>` with service account `service` (a CA join token)."""
    token = lab.token("default", service)
    bootstrap = lab.bootstrap(
        f"{service}-{version}",
        "default",
        service,
        token=token,
        labels={"app": service, "version": version},
    )
    return ["--metrics", "--bootstrap", str(bootstrap)]


def count_versions(client: httpx.Client, n: int) -> Counter[str]:
    served: Counter[str] = Counter()
    for _ in range(n):
        served[client.get(f"http://{REVIEWS}:{PORT}/reviews/1").json()["version"]] += 1
    return served


def wait_for_share(client: httpx.Client, version: str, share: float, window: int = 50) -> float:
    """Seconds until `version` serves at least `share` of a sliding window."""
    start = time.monotonic()
    recent: list[str] = []
    while time.monotonic() - start < 10:
        recent.append(client.get(f"http://{REVIEWS}:{PORT}/").json()["version"])
        recent = recent[-window:]
        if len(recent) == window and recent.count(version) / window >= share:
            return time.monotonic() - start
    raise SystemExit(f"traffic did not move to {version} within 10 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshot", type=Path, help="save the console's graph page (PNG)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mesh-demo-") as tmp:
        lab = LocalMesh(Path(tmp))
        prometheus = PrometheusServer(Path(tmp), scrape_interval="1s")
        try:
            run(lab, prometheus, args.screenshot)
        finally:
            prometheus.stop()
            lab.close()


def start_prometheus(prometheus: PrometheusServer, jobs: dict[str, list[str]]) -> bool:
    try:
        prometheus.start(jobs)
    except PrometheusError as exc:
        reason = "" if str(exc) == NOT_INSTALLED else f" ({exc})"
        print(f"no Prometheus{reason}: the console's graph stays empty ({NOT_INSTALLED})")
        return False
    print(f"Prometheus: {prometheus.url}, scraping every side's Istio metrics")
    return True


def run(lab: LocalMesh, prometheus: PrometheusServer, screenshot: Path | None) -> None:
    # The client's metrics: this process's own /metrics page.
    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    client_metrics, _ = start_http_server(0, addr="127.0.0.1")
    jobs = {"demo-client": [f"127.0.0.1:{client_metrics.server_port}"]}
    with_prometheus = start_prometheus(prometheus, jobs)
    # First the control plane: its CA gives every workload its identity, and
    # a mesh-wide PeerAuthentication makes every server STRICT (mutual TLS).
    lab.write_config("mtls.yaml", STRICT_MESH)
    cp = lab.start_control_plane(
        extra_args=["--prometheus-url", prometheus.url] if with_prometheus else []
    )
    print(f"control plane: xDS {cp.ready['xds']}, admin {cp.ready['admin']}, CA {lab.ca_address}")
    print("starting backends (mTLS, STRICT): reviews v1, reviews v2, ratings v1 ...")
    v1 = lab.start_http_backend("reviews", "v1", *in_mesh(lab, "reviews", "v1"))
    v2 = lab.start_http_backend("reviews", "v2", *in_mesh(lab, "reviews", "v2"))
    ratings = lab.start_http_backend(
        "ratings", "v1", *in_mesh(lab, "ratings", "v1"), "--fail-rate", "0.05"
    )
    lab.deploy_versions(
        REVIEWS, PORT, {"v1": v1, "v2": v2}, {"v1": 90, "v2": 10}, service_account="reviews"
    )
    lab.write_config(
        "ratings.yaml",
        service_entry(
            RATINGS,
            PORT,
            [("127.0.0.1", ratings.ready["port"], {"version": "v1"})],
            service_account="ratings",
        ),
    )
    if with_prometheus:
        backends = [f"127.0.0.1:{p.ready['metrics_port']}" for p in (v1, v2, ratings)]
        prometheus.set_jobs({**jobs, "backends": backends, "control-plane": [cp.ready["admin"]]})
    bootstrap = lab.bootstrap(
        "demo-client",
        "default",
        "demo-client",
        token=lab.token("default", "demo-client"),
        labels={"app": "demo-client", "version": "v1"},
    )

    rows: list[tuple[str, Counter[str], float | None]] = []
    telemetry = TelemetryConfig(meter_provider=provider, tracing=False)
    with (
        Mesh.from_bootstrap(bootstrap, telemetry=telemetry) as mesh,
        httpx.Client(transport=mesh.httpx_transport()) as client,
    ):
        answer = client.get(f"http://{RATINGS}:{PORT}/ratings/1")
        print(f"ratings answered through the mesh: {answer.status_code} {answer.json()}")
        rows.append(("90/10", count_versions(client, REQUESTS_PER_PHASE), None))
        for label, weights, target, share in (
            ("50/50", {"v1": 50, "v2": 50}, "v2", 0.3),
            ("0/100", {"v1": 0, "v2": 100}, "v2", 1.0),
        ):
            lab.set_weights(REVIEWS, weights)
            took = wait_for_share(client, target, share)
            rows.append((label, count_versions(client, REQUESTS_PER_PHASE), took))
        print("\nmeshctl status (what each connected client ACKed):")
        sys.stdout.flush()
        subprocess.run(
            [str(BIN / "meshctl"), "status", "--admin-address", lab.admin_address], check=False
        )
        print()
        print(f"{'split v1/v2':<12} {'v1':>6} {'v2':>6}   change reached the client after")
        for label, served, took in rows:
            after = "-" if took is None else f"{took * 1000:.0f} ms"
            print(f"{label:<12} {served['v1']:>6} {served['v2']:>6}   {after}")
        console = f"http://{lab.admin_address}/console/graph"
        print(f"\nconsole: {console}  (also /console/status and /console/simulate)")
        if with_prometheus and (screenshot is not None or sys.stdin.isatty()):
            show_console(lab, client, console, screenshot)


def show_console(
    lab: LocalMesh, client: httpx.Client, console: str, screenshot: Path | None
) -> None:
    """Traffic through both services (v1 back in the split) while the console
    is looked at: by a headless browser for `screenshot`, else by the user."""
    lab.set_weights(REVIEWS, {"v1": 70, "v2": 30})
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            client.get(f"http://{REVIEWS}:{PORT}/reviews/1")
            client.get(f"http://{RATINGS}:{PORT}/ratings/1")
            stop.wait(0.02)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        if screenshot is not None:
            take_screenshot(lab, console, screenshot)
        else:
            print("traffic keeps flowing; press Enter (or Ctrl-C) to stop")
            with contextlib.suppress(KeyboardInterrupt, EOFError):
                input()
    finally:
        stop.set()
        worker.join(10)


def take_screenshot(lab: LocalMesh, console: str, path: Path) -> None:
    from browser import chromium

    edges = graph_edges(lab)
    shares = sorted(f"{e['source']} -> {e['target']}: {e['mtls']:.0%}" for e in edges)
    print("mutual TLS share of each edge of the graph:\n  " + "\n  ".join(shares))
    with chromium(viewport={"width": 1100, "height": 560}) as browser:
        page = browser.new_page()
        page.goto(console)
        page.locator("g.edge").nth(GRAPH_EDGES - 1).wait_for()
        locks = sum(1 for e in edges if e["mtls"] == 1.0)
        if locks:
            page.locator("g.edge g.lock").nth(locks - 1).wait_for()
        page.screenshot(path=str(path), full_page=True)
    print(f"screenshot of the console: {path}")


def graph_edges(lab: LocalMesh) -> list[dict[str, Any]]:
    """/api/graph's edges once every edge has a rate and an mTLS share
    (Prometheus scrapes every second; rate() needs two samples)."""
    deadline = time.monotonic() + 60
    while True:
        edges: list[dict[str, Any]] = httpx.get(f"http://{lab.admin_address}/api/graph").json()[
            "edges"
        ]
        if len(edges) >= GRAPH_EDGES and all(e["mtls"] is not None for e in edges):
            return edges
        if time.monotonic() > deadline:
            raise SystemExit(f"the console's graph did not show every edge within 60 s: {edges}")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
