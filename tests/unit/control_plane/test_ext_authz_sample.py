"""tests/istio_samples/ext-authz (Istio's ext-authz task): the mesh config's
providers load, `analyze` warns about the MeshConfig fields not read, and
`simulate` names the CUSTOM policy and provider that decide first."""

from __future__ import annotations

from pathlib import Path

from mesh_control_plane.cli.analyze_cmd import analyze_dir, render_findings
from mesh_control_plane.cli.offline import load_offline
from mesh_control_plane.cli.simulate_cmd import simulate

SAMPLE = Path(__file__).resolve().parents[2] / "istio_samples" / "ext-authz"
HTTPBIN = "http://httpbin.foo.svc.cluster.local:8000"
CLUSTER = "outbound|8000||httpbin.foo.svc.cluster.local"


def test_simulate_names_the_custom_policy_and_its_provider() -> None:
    offline = load_offline(SAMPLE)
    headers = simulate(offline, "GET", f"{HTTPBIN}/headers")
    assert headers["authorization"] == [
        f"{CLUSTER}: CUSTOM by istio-ext-authz-ns[foo]-policy[ext-authz]-rule[0]: extension "
        "provider sample-ext-authz-http (ext-authz.foo.svc.cluster.local:8000) decides first; "
        "if it allows: ALLOW by foo/ext-authz"
    ]
    ip = simulate(offline, "GET", f"{HTTPBIN}/ip")
    assert ip["authorization"] == [f"{CLUSTER}: ALLOW by foo/ext-authz"]  # not sent to it


def test_analyze_warns_about_what_the_mesh_config_does_not_set() -> None:
    text = render_findings(analyze_dir(SAMPLE))
    assert "ConfigMap istio-system/istio: data.mesh.accessLogFile: not read" in text, text
