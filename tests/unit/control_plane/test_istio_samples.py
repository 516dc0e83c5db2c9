"""The Istio-shaped corpus under tests/istio_samples: each config directory
loads and `simulate` reports what Istio documents for it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mesh_control_plane.cli.analyze_cmd import analyze_dir, render_findings
from mesh_control_plane.cli.main import main
from mesh_control_plane.cli.offline import load_offline
from mesh_control_plane.cli.simulate_cmd import simulate
from mesh_control_plane.config import ConfigLoadError, load_config_dir, parse_documents
from mesh_control_plane.config.model import MeshSettings

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


REVIEWS = "http://reviews.bookinfo.svc.cluster.local:9080/reviews/0"


def test_short_names_mean_the_resource_namespace_service() -> None:
    offline = load_offline(SAMPLES / "bookinfo-short-names")
    jason = simulate(offline, "GET", REVIEWS, headers=[("end-user", "jason")])
    anyone = simulate(offline, "GET", REVIEWS)
    assert jason["outcome"] == "routed" and anyone["outcome"] == "routed"
    assert [c["name"] for c in jason["clusters"]] == [
        "outbound|9080|v2|reviews.bookinfo.svc.cluster.local"
    ]
    assert [e["address"] for e in jason["clusters"][0]["endpoints"]] == ["10.1.0.12:9080"]
    assert [e["address"] for e in anyone["clusters"][0]["endpoints"]] == ["10.1.0.11:9080"]


def test_the_domain_of_short_names_is_the_control_planes(tmp_path: Path) -> None:
    text = (SAMPLES / "bookinfo-short-names" / "bookinfo.yaml").read_text()
    (tmp_path / "bookinfo.yaml").write_text(text.replace("svc.cluster.local", "svc.corp.example"))
    config = load_config_dir(tmp_path, MeshSettings(domain="corp.example"))
    (service,) = config.virtual_services
    assert service.hosts == ("reviews.bookinfo.svc.corp.example",)
    assert config.destination_rules[0].host == "reviews.bookinfo.svc.corp.example"


FAULTS_RATINGS = "http://ratings.bookinfo.svc.cluster.local:9080"


def test_a_full_abort_is_not_reported_as_routed() -> None:
    offline = load_offline(SAMPLES / "bookinfo-faults")
    jason = simulate(offline, "GET", f"{FAULTS_RATINGS}/r", headers=[("end-user", "jason")])
    assert jason["outcome"].startswith("aborted by fault injection: HTTP 500 (flag FI)")
    assert "clusters" not in jason
    assert jason["effects"][0] == "fault abort HTTP 500 for 100% of requests (FI)"
    # Istio's default retry policy applies to a route that sets none
    assert jason["effects"][1].startswith("retries 2 on ")


def test_simulate_lists_every_effect_of_the_route() -> None:
    offline = load_offline(SAMPLES / "bookinfo-faults")
    slow = simulate(offline, "GET", f"{FAULTS_RATINGS}/slow/1")
    assert slow["outcome"] == "routed"
    assert slow["timeout"] == 10.0
    effects = slow["effects"]
    assert "fault delay 7s for 10% of requests" in effects
    assert "rewrite uri prefix to /ratings" in effects
    assert "mirror 50% to outbound|9080||ratings-canary.bookinfo.svc.cluster.local" in effects
    assert "request header set x-tier: gold" in effects
    assert "response header remove x-internal" in effects
    assert any(e.startswith("retries 3 on ") and e.endswith("per try 2s") for e in effects)
    plain = simulate(offline, "GET", f"{FAULTS_RATINGS}/r")
    assert plain["outcome"] == "routed" and "fault" not in " ".join(plain.get("effects", []))


def test_envoy_specific_kinds_and_tcp_routes_are_refused_by_name() -> None:
    assert render_findings(analyze_dir(SAMPLES / "refused")) == (
        "error: envoy-specific.yaml: EnvoyFilter istio-system/add-lua: kind: "
        "EnvoyFilter is Envoy-specific, not applicable in-process\n"
        "error: envoy-specific.yaml: WasmPlugin istio-system/basic-auth: kind: "
        "WasmPlugin is Envoy-specific, not applicable in-process\n"
        "error: envoy-specific.yaml: VirtualService echo/tcp-echo: spec.tcp: "
        "for mesh clients not supported yet (bind it to gateways only)\n"
        "3 errors, 0 warnings\n"
    )


def test_remote_keys_are_a_warning_not_a_crash() -> None:
    assert render_findings(analyze_dir(SAMPLES / "httpbin-jwt")) == (
        "warning: httpbin.yaml: RequestAuthentication foo/jwt-example: "
        "spec.jwtRules[0].jwksUri: keys at https://keys.example.invalid/jwks.json are fetched "
        "by the running control plane, not offline: analyze did not check them\n"
        "0 errors, 1 warning\n"
    )


def test_external_services_pass_through_to_the_host() -> None:
    offline = load_offline(SAMPLES / "external-services")
    config = offline.config
    assert config.service_entries == ()  # nothing is routed or balanced for them
    by_name = {se.meta.name: se for se in config.passthrough_entries}
    api = by_name["api"]
    assert (api.resolution, api.location) == ("NONE", "MESH_EXTERNAL")
    assert api.ports[0].protocol == "HTTP"  # protocol "" is unset: taken from the name
    assert by_name["search"].ports[0].protocol == "HTTPS"
    outcome = simulate(offline, "GET", "http://api.example.net:8080/v1")["outcome"]
    assert outcome == (
        "passed through to api.example.net:8080 itself (ServiceEntry default/api, "
        "resolution NONE, MESH_EXTERNAL: no mesh mTLS)"
    )
    assert render_findings(analyze_dir(SAMPLES / "external-services")) == "no problems found\n"


def test_omitted_resolution_with_endpoints_is_refused_naming_the_fix(tmp_path: Path) -> None:
    (tmp_path / "se.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        "metadata: {name: db, namespace: data}\n"
        "spec:\n  hosts: [db.data.internal]\n  ports: [{number: 5432, name: tcp}]\n"
        "  endpoints: [{address: 10.3.0.1}]\n"
    )
    assert render_findings(analyze_dir(tmp_path)) == (
        "error: se.yaml: ServiceEntry data/db: spec.resolution: NONE (Istio's default when "
        "unset) with spec.endpoints is not supported yet: set resolution: STATIC to send "
        "requests to the listed instances\n1 error, 0 warnings\n"
    )


def test_describe_of_a_passthrough_host_says_what_happens(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["describe", "api.example.net", "--config-dir", str(SAMPLES / "external-services")]
    assert main(args) != 0
    assert capsys.readouterr().err == (
        "meshctl: 'api.example.net' is declared by ServiceEntry default/api (egress.yaml) with "
        "resolution NONE: requests pass through to the host itself; nothing is routed or "
        "balanced for it\n"
    )


def test_names_as_long_as_kubernetes_allows() -> None:
    def policy(name: str) -> dict[str, object]:
        return {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "n" * 63},
            "spec": {"action": "DENY", "rules": [{}]},
        }

    longest = "a" * 200 + ".b" + "c" * 51  # 253 characters, a part longer than 63
    (loaded,) = parse_documents([("p.yaml", policy(longest))]).authorization_policies
    assert loaded.meta.name == longest
    with pytest.raises(ConfigLoadError, match="invalid name"):
        parse_documents([("p.yaml", policy(longest + "d"))])


HTTPBIN = "http://httpbin.httpbin.svc.cluster.local:8000"


def test_direct_response_delegation_and_cors_as_istio_documents() -> None:
    offline = load_offline(SAMPLES / "httpbin-routing")
    legacy = simulate(offline, "GET", f"{HTTPBIN}/legacy/ip")
    assert legacy["outcome"] == "direct response 410 (answered by the mesh, no upstream)"
    # /status is the delegate's: its own subset, its fault on /status/5xx.
    status = simulate(offline, "GET", f"{HTTPBIN}/status/200")
    assert [c["name"] for c in status["clusters"]] == [
        "outbound|8000|v2|httpbin.httpbin.svc.cluster.local"
    ]
    failing = simulate(offline, "GET", f"{HTTPBIN}/status/503")
    assert failing["outcome"].startswith("aborted by fault injection: HTTP 503")
    anything = simulate(offline, "GET", f"{HTTPBIN}/anything")
    assert [c["name"] for c in anything["clusters"]] == [
        "outbound|8000|v1|httpbin.httpbin.svc.cluster.local"
    ]
    assert any(effect.startswith("CORS:") for effect in anything["effects"])
    assert render_findings(analyze_dir(SAMPLES / "httpbin-routing")) == "no problems found\n"
