"""`make demo`: a canary rollout through the in-process mesh, start to finish.

Starts a control plane and three backends (reviews v1, reviews v2,
ratings v1) on 127.0.0.1, then a client that uses httpx through the mesh.
The VirtualService for reviews moves 90/10 -> 50/50 -> 0/100 while traffic
flows; the demo prints who served each phase and how long each change took
to reach the client. It finishes by itself.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from meshlab import BIN, LocalMesh, service_entry

from proxyless_mesh import Mesh

REVIEWS = "reviews.default.mesh"
RATINGS = "ratings.default.mesh"
PORT = 8080
REQUESTS_PER_PHASE = 400


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
    with tempfile.TemporaryDirectory(prefix="mesh-demo-") as tmp:
        lab = LocalMesh(Path(tmp))
        try:
            run(lab)
        finally:
            lab.close()


def run(lab: LocalMesh) -> None:
    print("starting backends: reviews v1, reviews v2, ratings v1 ...")
    v1 = lab.start_http_backend("reviews", "v1")
    v2 = lab.start_http_backend("reviews", "v2")
    ratings = lab.start_http_backend("ratings", "v1")
    lab.deploy_versions(REVIEWS, PORT, {"v1": v1, "v2": v2}, {"v1": 90, "v2": 10})
    lab.write_config(
        "ratings.yaml",
        service_entry(RATINGS, PORT, [("127.0.0.1", ratings.ready["port"], {"version": "v1"})]),
    )
    cp = lab.start_control_plane()
    print(f"control plane: xDS {cp.ready['xds']}, admin {cp.ready['admin']}")
    bootstrap = lab.bootstrap("demo-client")

    rows: list[tuple[str, Counter[str], float | None]] = []
    with (
        Mesh.from_bootstrap(bootstrap) as mesh,
        httpx.Client(transport=mesh.httpx_transport()) as client,
    ):
        ratings_answer = client.get(f"http://{RATINGS}:{PORT}/ratings/1").json()
        print(f"ratings answered through the mesh: {ratings_answer}")
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


if __name__ == "__main__":
    main()
