"""Strict validation: every problem is reported, with its exact file, resource and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from mesh_control_plane.config import (
    ConfigError,
    ConfigLoadError,
    ConfigProblem,
    StringMatch,
    load_config_dir,
    parse_documents,
)

VS_HEAD = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad}
spec:
  hosts: [reviews.mesh]
"""
SE_HEAD = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bad}
spec:
  resolution: STATIC
  location: MESH_INTERNAL
  hosts: [reviews.mesh]
"""
DR_HEAD = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad}
spec:
  host: reviews.mesh
"""
API = "networking.istio.io/v1"
SERVICE_A: list[tuple[str, object]] = [
    (
        "ok.yaml",
        {
            "apiVersion": API,
            "kind": "ServiceEntry",
            "metadata": {"name": "a"},
            "spec": {
                "resolution": "STATIC",
                "location": "MESH_INTERNAL",
                "hosts": ["a.default.svc.cluster.local", "reviews.mesh"],
                "ports": [{"number": 80, "name": "http"}],
            },
        },
    )
]
VS = "bad.yaml: VirtualService default/bad: "
SE = "bad.yaml: ServiceEntry default/bad: "
DR = "bad.yaml: DestinationRule default/bad: "


def problems(text: str) -> list[str]:
    """The problems parse_documents reports for the YAML `text` (as bad.yaml)."""
    docs = [("bad.yaml", doc) for doc in yaml.safe_load_all(textwrap.dedent(text))]
    with pytest.raises(ConfigLoadError) as caught:
        parse_documents(docs)
    return [str(problem) for problem in caught.value.problems]


def dir_problems(root: Path) -> list[str]:
    with pytest.raises(ConfigLoadError) as caught:
        load_config_dir(root)
    return [str(problem) for problem in caught.value.problems]


def vs(http: str) -> str:
    """A VirtualService with the given (indented) `http:` block."""
    return VS_HEAD + textwrap.indent(textwrap.dedent(http), "  ")


def test_problem_text_leaves_out_unknown_parts() -> None:
    assert str(ConfigProblem("a.yaml", "VirtualService ns/x", "spec.http", "oops")) == (
        "a.yaml: VirtualService ns/x: spec.http: oops"
    )
    assert str(ConfigProblem("a.yaml", "", "", "oops", line=3)) == "a.yaml: line 3: oops"
    assert issubclass(ConfigLoadError, ConfigError)


def test_unknown_field_deep_in_virtual_service() -> None:
    text = vs(
        """
        http:
        - frobnicate: 1
          route:
          - destination: {hots: reviews.mesh}
        """
    )
    assert problems(text) == [
        VS + "spec.http[0].frobnicate: unknown field (IST0106)",
        VS + "spec.http[0].route[0].destination.hots: unknown field (IST0106)",
        VS + "spec.http[0].route[0].destination.host: missing required field (IST0106)",
    ]


def test_unknown_fields_at_top_level_and_in_metadata() -> None:
    text = """
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: bad, namspace: x}
    spex: {}
    spec: {resolution: STATIC, location: MESH_INTERNAL,
      hosts: [a.mesh], ports: [{number: 80, name: http}]}
    """
    assert problems(text) == [
        SE + "metadata.namspace: unknown field (IST0106)",
        SE + "spex: unknown field (IST0106)",
    ]


def test_missing_required_fields() -> None:
    # No hosts is a delegate VirtualService (Istio), not a missing field.
    assert problems(VS_HEAD.replace("hosts: [reviews.mesh]", "{}")) == [
        VS + "spec.http: missing required field (IST0106)",
    ]
    no_spec = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bad}\n"
    assert problems(no_spec) == [DR + "spec: missing required field"]
    assert problems(SE_HEAD + "  ports: [{name: http}]\n") == [
        SE + "spec.ports[0].number: missing required field (IST0106)"
    ]


def test_wrong_types() -> None:
    text = SE_HEAD.replace("[reviews.mesh]", "reviews.mesh") + "  ports: {number: 80}\n"
    assert problems(text) == [
        SE + "spec.hosts: expected a list, got string (IST0106)",
        SE + "spec.ports: expected a list, got mapping (IST0106)",
    ]
    text = SE_HEAD + '  ports: [{number: "80", name: http}]\n'
    assert problems(text) == [
        SE + "spec.ports[0].number: expected an integer, got string (IST0106)"
    ]
    text = vs("http: [{route: [{destination: {host: reviews.mesh}}], timeout: 5}]")
    assert problems(text) == [
        VS + "spec.http[0].timeout: expected a string, got integer (quote the value) (IST0106)"
    ]


def test_bad_regex_names_the_field() -> None:
    text = vs(
        """
        http:
        - match: [{uri: {regex: "a(b"}}]
          route: [{destination: {host: reviews.mesh}}]
        """
    )
    assert problems(text) == [
        VS + "spec.http[0].match[0].uri.regex: invalid regex 'a(b': "
        "missing ), unterminated subpattern at position 1"
    ]


def uri_regex_docs(regex: str) -> list[tuple[str, object]]:
    """A VirtualService matching `regex` on the path, and the service it routes to."""
    # "a" is short for a.default.svc.cluster.local (Istio's short names)
    route = {"match": [{"uri": {"regex": regex}}], "route": [{"destination": {"host": "a"}}]}
    spec = {"hosts": ["reviews.mesh"], "http": [route]}
    meta = {"name": "bad"}
    doc = {"apiVersion": API, "kind": "VirtualService", "metadata": meta, "spec": spec}
    return [("bad.yaml", doc), *SERVICE_A]


@pytest.mark.parametrize(
    ("regex", "missing"),
    [
        ("a(?=b)", "lookaround assertions"),
        ("(?<!x)y", "lookaround assertions"),
        (r"(a)\1", "backreferences"),
        ("a++", "atomic groups or possessive quantifiers"),
    ],
)
def test_regex_features_re2_lacks_are_refused(regex: str, missing: str) -> None:
    with pytest.raises(ConfigLoadError) as caught:
        parse_documents(uri_regex_docs(regex))
    assert [str(p) for p in caught.value.problems] == [
        VS + f"spec.http[0].match[0].uri.regex: invalid regex {regex!r}: "
        f"RE2 (Envoy, gRPC) has no {missing}"
    ]


@pytest.mark.parametrize("regex", [r"[*+]\d+", "(?i)get|head", "[]a]{2}", r"\\1"])
def test_re2_compatible_regexes_are_accepted(regex: str) -> None:
    (loaded,) = parse_documents(uri_regex_docs(regex)).virtual_services
    assert loaded.http[0].match[0].uri == StringMatch("regex", regex)


def test_header_matched_twice_after_lower_casing() -> None:
    text = vs(
        """
        http:
        - match: [{headers: {X-A: {exact: "1"}, x-a: {exact: "2"}}}]
          route: [{destination: {host: reviews.mesh}}]
        """
    )
    assert problems(text) == [
        VS + 'spec.http[0].match[0].headers.x-a: header "x-a" is matched twice'
    ]


def test_string_match_needs_exactly_one_kind() -> None:
    text = vs(
        """
        http:
        - match: [{headers: {x-a: {}}, method: {exact: GET, prefix: G}}]
          route: [{destination: {host: reviews.mesh}}]
        """
    )
    assert problems(text) == [
        VS + "spec.http[0].match[0].headers.x-a: must set exactly one of exact, prefix, regex",
        VS + "spec.http[0].match[0].method: must set exactly one of exact, prefix, regex",
    ]


def test_bad_duration() -> None:
    text = vs("http: [{route: [{destination: {host: reviews.mesh}}], timeout: 1.5 s}]")
    assert problems(text) == [
        VS + 'spec.http[0].timeout: invalid duration "1.5 s" (expected e.g. "1.5s", "300ms", "2m")'
    ]


def test_route_weights() -> None:
    text = vs(
        """
        http:
        - route:
          - {destination: {host: reviews.mesh}, weight: 50}
          - {destination: {host: ratings.mesh}, weight: 40}
        - route: [{destination: {host: reviews.mesh}, weight: 50}]
        - route: []
        - route: [{destination: {host: reviews.mesh}, weight: 101}]
        - {}
        """
    )
    assert problems(text) == [
        VS + "spec.http[0].route: weights must sum to 100, got 90",
        VS + "spec.http[1].route[0].weight: a single destination takes all traffic: "
        "omit weight or set it to 100",
        VS + "spec.http[2].route: must have at least one destination",
        VS + "spec.http[3].route[0].weight: must be between 0 and 100, got 101 (IST0106)",
        VS + "spec.http[4].route: missing required field (a route needs at least one destination)",
    ]


def test_unsupported_features_are_named_not_ignored() -> None:
    text = vs(
        """
        http:
        - mirrorPercent: 5
          match: [{queryParams: {a: {exact: b}}}]
          route: [{destination: {host: reviews.mesh}}]
        """
    )
    assert problems(text) == [
        VS + "spec.http[0].mirrorPercent: not supported yet",
        VS + "spec.http[0].match[0].queryParams: not supported yet",
    ]
    text = DR_HEAD + (
        "  trafficPolicy:\n"
        "    tls: {mode: SIMPLE, caCertificates: /etc/ca.pem, insecureSkipVerify: true}\n"
        "    connectionPool: {tcp: {tcpKeepalive: {}}, http: {h2UpgradePolicy: UPGRADE}}\n"
        "    loadBalancer: {simple: PASSTHROUGH}\n"
    )
    assert problems(text) == [
        DR + "spec.trafficPolicy.loadBalancer.simple: PASSTHROUGH is not supported: it forwards "
        "to the original destination address, which a proxyless client does not have (it dials "
        "by service name); use ROUND_ROBIN, LEAST_REQUEST or RANDOM",
        DR + "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive: not supported yet",
        DR + "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy: not supported yet",
        DR + "spec.trafficPolicy.tls.insecureSkipVerify: not supported yet",
    ]
    # Protocols the mesh does not carry are refused where it would (STATIC); a
    # DNS/NONE entry passes requests through to the host and takes them.
    text = SE_HEAD + "  ports: [{number: 443, name: web, protocol: MONGO}]\n"
    assert problems(text) == [
        SE + "spec.ports[0].protocol: MONGO is not supported yet "
        "(supported: HTTP, HTTP2, GRPC, TCP, HTTPS, TLS)",
    ]


def test_service_entry_rules() -> None:
    text = SE_HEAD.replace("[reviews.mesh]", '[reviews.mesh, "*.mesh"]') + (
        "  ports: [{number: 80, name: web}, {number: 80, name: http}]\n"
        "  workloadSelector: {labels: {app: x}}\n"
        "  endpoints:\n"
        "  - {address: reviews.internal, weight: 0, ports: {grpc: 90}}\n"
    )
    assert problems(text) == [
        SE + 'spec.hosts[1]: wildcard hosts are not supported yet: "*.mesh"',
        SE + "spec.ports[0].protocol: missing required field "
        '(or name the port "<protocol>-<suffix>", e.g. "http-web")',
        SE + "spec.ports[1].number: duplicate port number 80",
        SE + 'spec.endpoints[0].address: "reviews.internal" is not an IP address '
        "(a DNS name needs resolution: DNS or DNS_ROUND_ROBIN)",
        SE + 'spec.endpoints[0].ports.grpc: no port named "grpc" in spec.ports',
        SE + "spec.endpoints[0].weight: weight must be >= 1",
        SE
        + "spec.workloadSelector: cannot be used together with spec.endpoints (Istio forbids it)",
    ]


def test_destination_rule_rules() -> None:
    text = DR_HEAD + "  subsets: [{name: v1}, {name: v1}, {name: V_2}]\n"
    assert problems(text) == [
        DR + 'spec.subsets[1].name: duplicate subset name "v1"',
        DR + 'spec.subsets[2].name: invalid subset name "V_2" (expected a DNS label)',
    ]


def test_gateway_names_and_wildcards_on_mesh_routes_are_refused() -> None:
    text = vs("gateways: [mesh, a/b/c, mesh]\nhttp: [{route: [{destination: {host: a}}]}]")
    found = problems(text.replace("reviews.mesh", "'*.mesh'"))
    assert found[:3] == [
        VS + 'spec.gateways[1]: invalid gateway "a/b/c" (expected "mesh", "name" or "ns/name")',
        VS + 'spec.gateways[2]: duplicate gateway "mesh"',
        VS + 'spec.hosts[0]: wildcard hosts are not supported yet: "*.mesh"',
    ]


def test_unknown_kind_and_api_version() -> None:
    text = """
    apiVersion: networking.istio.io/v1
    kind: Frobnicator
    metadata: {name: a}
    ---
    apiVersion: networking.istio.io/v1
    kind: ProxyConfig
    metadata: {name: a}
    ---
    apiVersion: networking.istio.io/v2
    kind: ServiceEntry
    metadata: {name: a}
    ---
    - just a list
    """
    assert problems(text) == [
        'bad.yaml: Frobnicator default/a: kind: unknown kind "Frobnicator" '
        "(supported: AuthorizationPolicy, DestinationRule, Gateway, PeerAuthentication, "
        "RequestAuthentication, ServiceEntry, Sidecar, Telemetry, VirtualService, "
        "WorkloadEntry, WorkloadGroup)",
        "bad.yaml: ProxyConfig default/a: kind: ProxyConfig is not supported yet",
        'bad.yaml: apiVersion: unsupported apiVersion "networking.istio.io/v2" for ServiceEntry '
        "(expected networking.istio.io/v1, networking.istio.io/v1beta1, "
        "networking.istio.io/v1alpha3)",
        "bad.yaml: expected a Kubernetes-style resource (a mapping), got list",
    ]


def test_metadata_rules() -> None:
    text = """
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: Bad_Name, namespace: shop}
    spec: {resolution: STATIC, location: MESH_INTERNAL,
      hosts: [a.mesh], ports: [{number: 80, name: http}]}
    ---
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: bad, labels: {version: 2}}
    spec: {resolution: STATIC, location: MESH_INTERNAL,
      hosts: [b.mesh], ports: [{number: 80, name: http}]}
    """
    assert problems(text) == [
        'bad.yaml: metadata.name: invalid name "Bad_Name" (lower-case letters, digits "-" and ".")',
        SE + "metadata.labels.version: expected a string, got integer (quote the value) (IST0106)",
    ]


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("a: 1\nb: [1, 2\nc: 3\n")
    assert dir_problems(tmp_path) == [
        "bad.yaml: line 3: could not parse YAML: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence)"
    ]


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        textwrap.dedent(vs("http: [{route: [{destination: {host: a}}]}]\nhttp: []\n"))
    )
    assert dir_problems(tmp_path) == ['bad.yaml: line 8: duplicate key "http"']


def test_resource_without_name_is_located_by_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        textwrap.dedent(SE_HEAD + "  ports: [{number: 80, name: http}]\n---\n")
        + "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {}\nspec: {}\n"
    )
    assert dir_problems(tmp_path) == [
        "bad.yaml: line 11: metadata.name: missing required field",
        "bad.yaml: line 11: spec.hosts: missing required field (IST0106)",
        "bad.yaml: line 11: spec.ports: missing required field (IST0106)",
    ]


def test_duplicate_resource_across_files_names_both(tmp_path: Path) -> None:
    se = textwrap.dedent(SE_HEAD + "  ports: [{number: 80, name: http}]\n")
    (tmp_path / "a.yaml").write_text(se)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text(se)
    assert dir_problems(tmp_path) == [
        "sub/b.yaml: ServiceEntry default/bad: duplicate resource, also defined in a.yaml"
    ]


def test_all_problems_of_all_files_are_reported_together(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("kind: [\n")
    (tmp_path / "b.yaml").write_text(
        textwrap.dedent(
            vs(
                """
                http:
                - route: [{destination: {host: reviews.mesh}, weight: 100}]
                  timeout: soon
                  mirrorPercent: 5
                """
            )
        )
        + "---\n"
        + textwrap.dedent(SE_HEAD)
    )
    problems_found = dir_problems(tmp_path)
    assert problems_found == [
        "a.yaml: line 2: could not parse YAML: expected the node content, "
        "but found '<stream end>' (while parsing a flow node)",
        "b.yaml: VirtualService default/bad: spec.http[0].mirrorPercent: not supported yet",
        'b.yaml: VirtualService default/bad: spec.http[0].timeout: invalid duration "soon" '
        '(expected e.g. "1.5s", "300ms", "2m")',
        "b.yaml: ServiceEntry default/bad: spec.ports: missing required field (IST0106)",
    ]
    with pytest.raises(ConfigLoadError) as caught:
        load_config_dir(tmp_path)
    assert str(caught.value).splitlines()[0] == "invalid mesh configuration (4 problems)"
