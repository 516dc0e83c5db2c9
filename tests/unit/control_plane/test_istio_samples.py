"""The Istio-shaped corpus under tests/istio_samples: each config directory
loads and `simulate` reports what Istio documents for it."""

from __future__ import annotations

from pathlib import Path

from mesh_control_plane.cli.offline import load_offline
from mesh_control_plane.cli.simulate_cmd import simulate

SAMPLES = Path(__file__).resolve().parents[2] / "istio_samples"
RATINGS = "http://ratings.bookinfo.svc.cluster.local:9080/ratings/0"
CLUSTER = "outbound|9080||ratings.bookinfo.svc.cluster.local"
VIEWER = "ns[bookinfo]-policy[ratings-viewer]-rule[0]"
DENY_POST = "ns[bookinfo]-policy[deny-post]-rule[0]"


def test_dry_run_policies_never_decide_and_simulate_shows_them() -> None:
    offline = load_offline(SAMPLES / "bookinfo-dry-run")
    reviews = simulate(offline, "GET", RATINGS, source="bookinfo/bookinfo-reviews")
    stranger = simulate(offline, "POST", RATINGS, source="other/stranger")
    policies = "bookinfo/deny-post (dry-run), bookinfo/ratings-viewer (dry-run)"
    assert reviews["authorization"] == [
        f"{CLUSTER}: ALLOW by {policies}"
        f"; dry-run DENY policies would have allowed it"
        f"; dry-run ALLOW policies would have allowed it by {VIEWER}"
    ]
    assert stranger["authorization"] == [
        f"{CLUSTER}: ALLOW by {policies}"
        f"; dry-run DENY policies would have denied it by {DENY_POST}"
        f"; dry-run ALLOW policies would have denied it"
    ]
