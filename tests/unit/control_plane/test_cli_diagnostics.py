"""`meshctl analyze`, `describe` and `simulate` on a config directory with
known mistakes, checked against golden text (offline: nothing listens)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mesh_control_plane.admin.describe import describe_host
from mesh_control_plane.cli.describe_cmd import render_description
from mesh_control_plane.cli.main import main
from mesh_control_plane.cli.offline import load_offline
from mesh_control_plane.cli.simulate_cmd import render_simulation, simulate

ROUTES_YAML = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.mesh]
  http:
  - route:
    - destination: {host: reviews.default.mesh, subset: v1}
      weight: 100
    - destination: {host: reviews.default.mesh, subset: v3}
      weight: 0
  - match:
    - uri: {prefix: /beta}
    route:
    - destination: {host: reviews.default.mesh, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.mesh]
  http:
  - route:
    - destination: {host: ratings.default.mesh}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nobody, namespace: default}
spec:
  selector: {matchLabels: {app: ghost}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/web"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-only, namespace: default}
spec:
  selector: {matchLabels: {version: v1}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/web"]}
"""

RULES_YAML = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.mesh
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"""

SERVICES_YAML = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP}
"""

ANALYZE_GOLDEN = """\
warning: routes.yaml: AuthorizationPolicy default/nobody: spec.selector: selector matches no workload in the mesh: this policy applies to nothing
warning: routes.yaml: VirtualService default/ratings: spec.http[0].route[0].destination.host: host "ratings.default.mesh" has no endpoints: requests will fail (UH)
warning: routes.yaml: VirtualService default/reviews: spec.http[0].route[1].weight: weight 0: this destination receives no traffic
warning: routes.yaml: VirtualService default/reviews: spec.http[1]: unreachable: spec.http[0] above matches every request
warning: rules.yaml: DestinationRule default/reviews: spec.subsets[2]: subset "v3" selects no endpoints of "reviews.default.mesh" (labels version=v3)
warning: rules.yaml: DestinationRule default/reviews: spec.subsets[1]: subset "v2" is not used by any VirtualService route
0 errors, 6 warnings
"""  # noqa: E501

DESCRIBE_GOLDEN = """\
host:        reviews.default.mesh
service:     ServiceEntry default/reviews (services.yaml), ports 8080/HTTP
routing:     VirtualService default/reviews (routes.yaml)
  route default/reviews/0: when any request
    100% -> reviews.default.mesh subset v1
      0% -> reviews.default.mesh subset v3
  route default/reviews/1: when uri prefix /beta
    100% -> reviews.default.mesh subset v1
policy:      DestinationRule default/reviews (rules.yaml)
  subset v1: version=v1
  subset v2: version=v2
  subset v3: version=v3
authz:       AuthorizationPolicy default/web-only (ALLOW)
cluster:     outbound|8080||reviews.default.mesh (ROUND_ROBIN)
  10.0.0.1:8080 HEALTHY priority 0 weight 1
  10.0.0.2:8080 HEALTHY priority 0 weight 1
cluster:     outbound|8080|v1|reviews.default.mesh (ROUND_ROBIN)
  10.0.0.1:8080 HEALTHY priority 0 weight 1
cluster:     outbound|8080|v2|reviews.default.mesh (ROUND_ROBIN)
  10.0.0.2:8080 HEALTHY priority 0 weight 1
cluster:     outbound|8080|v3|reviews.default.mesh (ROUND_ROBIN)
  no endpoints
"""


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "services.yaml").write_text(SERVICES_YAML)
    (tmp_path / "rules.yaml").write_text(RULES_YAML)
    (tmp_path / "routes.yaml").write_text(ROUTES_YAML)
    return tmp_path


def test_analyze_reports_each_known_mistake(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", str(config_dir)]) == 0  # warnings only
    assert capsys.readouterr().out == ANALYZE_GOLDEN


def test_analyze_exits_non_zero_on_errors(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (config_dir / "orphan.yaml").write_text(
        "apiVersion: networking.istio.io/v1\n"
        "kind: DestinationRule\n"
        "metadata: {name: orphan, namespace: default}\n"
        "spec: {host: unknown.default.mesh}\n"
    )
    assert main(["analyze", str(config_dir)]) == 1
    assert capsys.readouterr().out == (
        "error: orphan.yaml: DestinationRule default/orphan: spec.host: "
        'no ServiceEntry declares host "unknown.default.mesh" (IST0101)\n'
        "1 error, 0 warnings\n"
    )


def test_analyze_of_a_clean_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "services.yaml").write_text(SERVICES_YAML.split("---")[0])
    assert main(["analyze", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "no problems found\n"


def test_describe_matches_golden(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", "reviews.default.mesh", "--config-dir", str(config_dir)]) == 0
    assert capsys.readouterr().out == DESCRIBE_GOLDEN
    assert main(["describe", "nope.mesh", "--config-dir", str(config_dir)]) == 1
    assert "no ServiceEntry declares host 'nope.mesh'" in capsys.readouterr().err


def test_describe_renders_the_same_from_json(config_dir: Path) -> None:
    offline = load_offline(config_dir)
    data = describe_host(
        offline.config, offline.registry, offline.state, "reviews.default.mesh", offline.policies
    )
    assert render_description(data) == DESCRIBE_GOLDEN


def test_simulate_route_cluster_endpoints_and_authorization(config_dir: Path) -> None:
    offline = load_offline(config_dir)
    url = "http://reviews.default.mesh:8080/beta"
    allowed = simulate(offline, "GET", url, source="default/web")
    denied = simulate(offline, "GET", url, source="default/other")
    assert render_simulation(allowed) == (
        "request:   GET http://reviews.default.mesh:8080/beta\n"
        "authority: reviews.default.mesh:8080\n"
        "route:     default/reviews/0\n"
        "outcome:   routed\n"
        "effect:    retries 2 on cancelled,connect-failure,refused-stream,"
        "retriable-status-codes,unavailable (status 503)\n"
        "cluster:   100% outbound|8080|v1|reviews.default.mesh\n"
        "  endpoint 10.0.0.1:8080 HEALTHY\n"
        "authz:     outbound|8080|v1|reviews.default.mesh: ALLOW by default/web-only\n"
    )
    assert denied["authorization"] == [
        "outbound|8080|v1|reviews.default.mesh: DENY 403: no ALLOW policy matched; "
        "policies default/web-only"
    ]
    outside = simulate(offline, "GET", "http://elsewhere.example/")
    assert outside["outcome"].startswith("not a mesh service")
    assert outside["authority"] == "elsewhere.example:80"


def test_simulate_command_line(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "simulate",
        "GET",
        "http://ratings.default.mesh:9080/x",
        "--config-dir",
        str(config_dir),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "cluster:   100% outbound|9080||ratings.default.mesh\n" in out
    assert "  endpoint (none: fails with UH)\n" in out
    assert main([*args, "--header", "novalue"]) == 2
    assert main([*args, "--from", "just-a-namespace"]) == 2
