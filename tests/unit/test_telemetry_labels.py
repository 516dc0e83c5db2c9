"""Istio's workload naming rules, its peer-metadata wire format (checked
against protobuf's own Struct codec) and the full standard label set on
both reporter sides."""

from __future__ import annotations

import base64

from google.protobuf import struct_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from proxyless_mesh.bootstrap import Bootstrap, XdsServer
from proxyless_mesh.telemetry import Telemetry, TelemetryConfig, Workload
from proxyless_mesh.telemetry._labels import (
    Peer,
    canonical_revision,
    canonical_service,
    default_workload_name,
    endpoint_peer,
    parse_peer,
)

FRONT = "spiffe://cluster.local/ns/web/sa/frontend"
API = "spiffe://cluster.local/ns/shop/sa/api"


def bootstrap(node_id: str, **metadata: object) -> Bootstrap:
    return Bootstrap(
        xds_servers=(XdsServer("127.0.0.1:1"),), node_id=node_id, node_metadata=metadata
    )


def test_workload_name_defaults_as_istio_names_a_deployment() -> None:
    assert default_workload_name("frontend-1", {}) == "frontend"
    assert default_workload_name("reviews-v1-7d9f8b6c4-x2k4p", {}) == "reviews-v1"
    assert default_workload_name("frontend", {}) == "frontend"
    assert default_workload_name("frontend-1", {"app": "web"}) == "web"
    named = bootstrap("frontend-1", WORKLOAD_NAME="front-door", NAMESPACE="web")
    assert Workload.from_bootstrap(named).name == "front-door"
    assert Workload.from_bootstrap(bootstrap("frontend-1", NAMESPACE="web")).name == "frontend"


def test_canonical_names_read_istios_labels_in_order() -> None:
    full = {
        "service.istio.io/canonical-name": "c",
        "app.kubernetes.io/name": "k",
        "app": "a",
        "service.istio.io/canonical-revision": "r1",
        "app.kubernetes.io/version": "k1",
        "version": "v1",
    }
    assert canonical_service(full, "w") == "c"
    assert canonical_revision(full) == "r1"
    assert canonical_service({"app.kubernetes.io/name": "k", "app": "a"}, "w") == "k"
    assert canonical_service({"app": "a"}, "w") == "a"
    assert canonical_service({}, "w") == "w"
    assert canonical_revision({"app.kubernetes.io/version": "k1", "version": "v1"}) == "k1"
    assert canonical_revision({"version": "v1"}) == "v1"
    assert canonical_revision({}) == "latest"


def test_cluster_and_labels_come_from_istio_node_metadata() -> None:
    workload = Workload.from_bootstrap(
        bootstrap(
            "reviews-2",
            NAMESPACE="shop",
            CLUSTER_ID="east",
            LABELS={"app": "reviews", "version": "v2"},
        )
    )
    assert workload.peer == Peer("reviews", "shop", "reviews", "v2", "east", "reviews", "v2")
    assert Workload.from_bootstrap(bootstrap("x", NAMESPACE="shop")).cluster == "Kubernetes"


def test_peer_metadata_is_protobuf_struct_both_ways() -> None:
    workload = Workload(
        "reviews-v2",
        "shop",
        "spiffe://cluster.local/ns/shop/sa/reviews",
        {"app": "reviews", "version": "v2", "team": "not-sent"},
        "east",
        "reviews-v2-1",
    )
    headers = dict(workload.peer_headers)
    assert headers["x-envoy-peer-metadata-id"] == "reviews-v2-1"
    struct = struct_pb2.Struct()
    struct.ParseFromString(base64.b64decode(headers["x-envoy-peer-metadata"]))
    decoded = {
        key: (value.string_value if value.HasField("string_value") else dict(value.struct_value))
        for key, value in struct.fields.items()
    }
    assert decoded["NAMESPACE"] == "shop"
    assert decoded["WORKLOAD_NAME"] == "reviews-v2"
    assert decoded["CLUSTER_ID"] == "east"
    assert decoded["SERVICE_ACCOUNT"] == "reviews"
    assert decoded["LABELS"]["app"] == "reviews"
    assert "team" not in decoded["LABELS"]
    # What an Istio proxy sends (built by protobuf, with a number we skip):
    sent = struct_pb2.Struct()
    sent.update(
        {
            "NAME": "ratings-v1-5f9d7c8b6-abcde",
            "NAMESPACE": "bookinfo",
            "CLUSTER_ID": "Kubernetes",
            "LABELS": {"app": "ratings", "version": "v1"},
            "PLATFORM_METADATA": {},
            "INSTANCE_IPS": "10.0.0.1",
            "ISTIO_VERSION": "1.22.0",
            "APP_CONTAINERS": "ratings",
            "EXCHANGE_KEYS": "NAME,NAMESPACE",
            "number": 3,
        }
    )
    peer = parse_peer(base64.b64encode(sent.SerializeToString()).decode())
    assert peer == Peer("ratings", "bookinfo", "ratings", "v1", "Kubernetes", "ratings", "v1")


def test_hostile_peer_metadata_is_refused() -> None:
    assert parse_peer("not base64!") is None
    assert parse_peer(base64.b64encode(b"\x0a\xff\xff").decode()) is None  # truncated
    assert parse_peer("A" * 5000) is None
    bad = struct_pb2.Struct()
    bad.update({"NAMESPACE": "shop", "WORKLOAD_NAME": "<script>"})
    peer = parse_peer(base64.b64encode(bad.SerializeToString()).decode())
    assert peer is None  # no safe workload name: the header is ignored


def _series(
    reader: InMemoryMetricReader, name: str = "istio_requests_total"
) -> list[dict[str, str]]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        dict(point.attributes or {})
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points  # type: ignore[union-attr]
    ]


def test_both_reporters_carry_istios_full_label_set() -> None:
    """A meshed exchange between two Telemetry objects, through the headers."""
    front = Workload("frontend", "web", FRONT, {"app": "frontend", "version": "v1"}, "west")
    api = Workload(
        "api-v3",
        "shop",
        API,
        {"app.kubernetes.io/name": "api", "app.kubernetes.io/version": "3.1"},
        "east",
    )
    client_reader, server_reader = InMemoryMetricReader(), InMemoryMetricReader()
    client = Telemetry(
        TelemetryConfig(meter_provider=MeterProvider(metric_readers=[client_reader])), front
    )
    server = Telemetry(
        TelemetryConfig(meter_provider=MeterProvider(metric_readers=[server_reader])), api
    )
    sent: dict[str, str] = {}
    outbound = client.call("source", "http", "GET", "api.shop.svc.cluster.local:80", "/")
    assert outbound is not None
    outbound.routed("r", "outbound|80||api.shop.svc.cluster.local", True, API)
    outbound.attempt_start(1, "127.0.0.1", 80, sent.__setitem__)
    inbound = server.call("destination", "http", "GET", "api.shop.svc.cluster.local:80", "/")
    assert inbound is not None
    inbound.peer_principal, inbound.secure = FRONT, True
    inbound.start_server_span(sent.get)
    inbound.finish(404)
    outbound.peer_from_response(dict(server.peer_headers).get)
    outbound.finish(404)
    (source,) = _series(client_reader)
    (destination,) = _series(server_reader)
    shared = {
        "source_workload": "frontend",
        "source_workload_namespace": "web",
        "source_principal": FRONT,
        "source_app": "frontend",
        "source_version": "v1",
        "source_cluster": "west",
        "source_canonical_service": "frontend",
        "source_canonical_revision": "v1",
        "destination_workload": "api-v3",
        "destination_workload_namespace": "shop",
        "destination_principal": API,
        "destination_app": "api",
        "destination_version": "3.1",
        "destination_cluster": "east",
        "destination_canonical_service": "api",
        "destination_canonical_revision": "3.1",
        "destination_service": "api.shop.svc.cluster.local",
        "destination_service_name": "api",
        "destination_service_namespace": "shop",
        "request_protocol": "http",
        "response_code": "404",
        "grpc_response_status": "",
        "response_flags": "-",
    }
    assert source == {**shared, "reporter": "source", "connection_security_policy": "unknown"}
    assert destination == {
        **shared,
        "reporter": "destination",
        "connection_security_policy": "mutual_tls",
    }


def test_destination_believes_the_certificate_over_the_header() -> None:
    reader = InMemoryMetricReader()
    server = Telemetry(
        TelemetryConfig(meter_provider=MeterProvider(metric_readers=[reader])),
        Workload("api", "shop", API),
    )
    liar = dict(Workload("admin", "kube-system").peer_headers)  # claims another namespace
    inbound = server.call("destination", "http", "GET", "api.shop.mesh:80", "/")
    assert inbound is not None
    inbound.peer_principal, inbound.secure = FRONT, True
    inbound.start_server_span(liar.get)
    inbound.finish(200)
    (labels,) = _series(reader)
    assert (labels["source_workload"], labels["source_workload_namespace"]) == ("unknown", "web")


def test_istio_build_gauge() -> None:
    reader = InMemoryMetricReader()
    Telemetry(TelemetryConfig(meter_provider=MeterProvider(metric_readers=[reader])))
    builds = _series(reader, "istio_build")
    assert builds == [{"component": "proxy", "tag": builds[0]["tag"]}]
    assert builds[0]["tag"][0].isdigit()


def test_endpoint_peer_reads_istiods_endpoint_metadata() -> None:
    assert endpoint_peer("ratings-vm-1;shop;ratings;v3;east") == Peer(
        "ratings-vm-1", "shop", "unknown", "unknown", "east", "ratings", "v3"
    )
    # istiod leaves out the default revision; an inline endpoint has no workload
    assert endpoint_peer(";;details;;Kubernetes") == Peer(
        cluster="Kubernetes", canonical_service="details", canonical_revision="latest"
    )
    assert endpoint_peer(";;;;Kubernetes") == Peer(cluster="Kubernetes")
    for malformed in ("", "a;b;c", "a;b;c;d;e;f", "a b;ns;s;r;c", "x;" + "y" * 300 + ";s;r;c"):
        assert endpoint_peer(malformed) == Peer(), malformed
