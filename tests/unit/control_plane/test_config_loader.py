"""Loading valid Istio YAML from a directory into the typed model."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from mesh_control_plane.config import (
    ConfigLoadError,
    Destination,
    HTTPMatchRequest,
    HTTPRouteDestination,
    LoadBalancerSettings,
    MeshConfig,
    Meta,
    ServicePort,
    StringMatch,
    Subset,
    TrafficPolicy,
    WorkloadEndpoint,
    config_files,
    load_config_dir,
    parse_documents,
    parse_duration,
)

SERVICES = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: shop
  labels: {app: reviews}
  annotations: {owner: team-a}
  resourceVersion: "4711"
  uid: 0b6f1a52-8c1e-4f57-a1a1-3b1c1f0e0e0e
  generation: 3
  creationTimestamp: 2024-05-01T10:00:00Z
spec:
  hosts: [Reviews.Shop.Mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 8080, name: http, protocol: http, targetPort: 18080}
  - {number: 9090, name: grpc-api}
  endpoints:
  - address: 10.0.0.1
    ports: {http: 28080}
    labels: {version: v1}
    locality: eu-west/zone-a/rack-1
    network: net-1
    serviceAccount: reviews
  - address: "0:0::1"
    labels: {version: v2}
    weight: 3
---
# an empty document, as left by a trailing separator
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: ratings, namespace: shop}
spec:
  resolution: STATIC
  hosts: [ratings.shop.mesh]
  location: MESH_EXTERNAL
  ports: [{number: 80, name: http-web}]
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1alpha3
kind: WorkloadEntry
metadata: {name: ratings-1, namespace: shop}
spec:
  address: 10.0.1.1
  ports: {http-web: 8081}
  labels: {app: ratings}
  locality: eu-west
  weight: 2
  serviceAccount: ratings
"""

ROUTES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.shop.mesh
  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {simple: RANDOM}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.mesh]
  gateways: [mesh]
  http:
  - name: canary
    match:
    - name: jason
      headers: {X-User: {exact: jason}}
      uri: {prefix: /api}
      method: {regex: "GET|HEAD"}
      ignoreUriCase: true
    route:
    - destination: {host: reviews.shop.mesh, subset: v2}
      weight: 80
    - destination: {host: reviews.shop.mesh, subset: v1, port: {number: 8080}}
      weight: 20
    timeout: 1.5s
  - route:
    - destination: {host: ratings.shop.mesh}
"""


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    write(tmp_path, "services.yaml", SERVICES)
    write(tmp_path, "routing/reviews.yml", ROUTES)
    return tmp_path


def test_service_entry_is_loaded_with_normalized_values(config_dir: Path) -> None:
    config = load_config_dir(config_dir)
    ratings, reviews = config.service_entries  # sorted by (namespace, name)
    assert reviews.meta == Meta("ServiceEntry", "reviews", "shop", "services.yaml")
    assert reviews.hosts == ("reviews.shop.mesh",)
    assert reviews.ports == (
        ServicePort(8080, "HTTP", "http", 18080),
        ServicePort(9090, "GRPC", "grpc-api"),  # protocol taken from the name, as Istio does
    )
    assert (reviews.resolution, reviews.location) == ("STATIC", "MESH_INTERNAL")
    assert reviews.endpoints == (
        WorkloadEndpoint(
            address="10.0.0.1",
            ports={"http": 28080},
            labels={"version": "v1"},
            locality="eu-west/zone-a/rack-1",
            network="net-1",
            service_account="reviews",
        ),
        WorkloadEndpoint(address="::1", labels={"version": "v2"}, weight=3),
    )
    assert reviews.workload_selector is None
    assert ratings.ports == (ServicePort(80, "HTTP", "http-web"),)
    assert ratings.location == "MESH_EXTERNAL"
    assert ratings.workload_selector == {"app": "ratings"}


def test_workload_entry_is_loaded(config_dir: Path) -> None:
    (entry,) = load_config_dir(config_dir).workload_entries
    assert entry.meta == Meta("WorkloadEntry", "ratings-1", "shop", "services.yaml")
    assert entry.endpoint == WorkloadEndpoint(
        address="10.0.1.1",
        ports={"http-web": 8081},
        labels={"app": "ratings"},
        locality="eu-west",
        weight=2,
        service_account="ratings",
    )


def test_destination_rule_is_loaded(config_dir: Path) -> None:
    (rule,) = load_config_dir(config_dir).destination_rules
    assert rule.meta.file == "routing/reviews.yml"
    assert rule.host == "reviews.shop.mesh"
    assert rule.traffic_policy == TrafficPolicy(LoadBalancerSettings("LEAST_REQUEST"))
    assert rule.subsets == (
        Subset("v1", {"version": "v1"}),
        Subset("v2", {"version": "v2"}, TrafficPolicy(LoadBalancerSettings("RANDOM"))),
    )


def test_virtual_service_is_loaded(config_dir: Path) -> None:
    (vs,) = load_config_dir(config_dir).virtual_services
    assert vs.hosts == ("reviews.shop.mesh",)
    canary, fallback = vs.http
    assert canary.name == "canary"
    assert canary.match == (
        HTTPMatchRequest(
            name="jason",
            uri=StringMatch("prefix", "/api"),
            method=StringMatch("regex", "GET|HEAD"),
            headers={"x-user": StringMatch("exact", "jason")},  # header names lower-cased
            ignore_uri_case=True,
        ),
    )
    assert canary.route == (
        HTTPRouteDestination(Destination("reviews.shop.mesh", "v2"), 80),
        HTTPRouteDestination(Destination("reviews.shop.mesh", "v1", 8080), 20),
    )
    assert canary.timeout == 1.5
    assert fallback.route == (HTTPRouteDestination(Destination("ratings.shop.mesh"), 0),)
    assert fallback.match == () and fallback.timeout is None


def test_resources_are_sorted_by_namespace_then_name(tmp_path: Path) -> None:
    docs = []
    for namespace, name in [("b", "a"), ("a", "z"), ("a", "b")]:
        docs.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "ServiceEntry",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "resolution": "STATIC",
                    "location": "MESH_INTERNAL",
                    "hosts": [f"{name}.{namespace}.mesh"],
                    "ports": [{"number": 80, "name": "http"}],
                },
            }
        )
    config = parse_documents(("x.yaml", doc) for doc in docs)
    names = [(se.meta.namespace, se.meta.name) for se in config.service_entries]
    assert names == [("a", "b"), ("a", "z"), ("b", "a")]


def test_namespace_defaults_to_default_and_resolution_to_static() -> None:
    (doc,) = yaml.safe_load_all(
        """
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: a}
        spec: {resolution: STATIC, location: MESH_INTERNAL,
          hosts: [a.mesh], ports: [{number: 80, name: tcp}]}
        """
    )
    (se,) = parse_documents([("a.yaml", doc)]).service_entries
    assert se.meta.ref == "ServiceEntry default/a"
    assert se.resolution == "STATIC"
    assert se.ports == (ServicePort(80, "TCP", "tcp"),)


def test_kubectl_list_output_is_expanded(tmp_path: Path) -> None:
    write(
        tmp_path,
        "dump.yaml",
        """
        apiVersion: v1
        kind: List
        metadata: {resourceVersion: ""}
        items:
        - apiVersion: networking.istio.io/v1
          kind: ServiceEntry
          metadata: {name: a, namespace: default}
          spec: {resolution: STATIC, location: MESH_INTERNAL,
            hosts: [a.mesh], ports: [{number: 80, name: http}]}
          status: {}
        """,
    )
    (se,) = load_config_dir(tmp_path).service_entries
    assert se.hosts == ("a.mesh",)


def test_hidden_and_editor_files_are_ignored(config_dir: Path) -> None:
    for name in [".#services.yaml", "services.yaml~", ".services.yaml.swp", "#services.yaml#"]:
        write(config_dir, name, "this: [is not yaml\n")
    write(config_dir, ".git/config.yaml", "nor: [this\n")
    write(config_dir, "..2024_01_01/services.yaml", "nor: [this\n")
    write(config_dir, "notes.txt", "nor: [this\n")
    files = [p.relative_to(config_dir).as_posix() for p in config_files(config_dir)]
    assert files == ["routing/reviews.yml", "services.yaml"]
    assert len(load_config_dir(config_dir).service_entries) == 2


def test_empty_directory_loads_as_empty_config(tmp_path: Path) -> None:
    config = load_config_dir(tmp_path)
    assert config == MeshConfig()


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigLoadError) as caught:
        load_config_dir(tmp_path / "nope")
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path / 'nope'}: config directory does not exist"
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1.5s", 1.5), ("300ms", 0.3), ("2m", 120.0), ("1h", 3600.0), ("1m30s", 90.0), ("0", 0.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "1.5", "s", "-1s", "1.5 s", "1d", "ms"])
def test_invalid_durations(text: str) -> None:
    assert parse_duration(text) is None
