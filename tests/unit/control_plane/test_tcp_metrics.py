"""The agent's istio_tcp_* counting from Envoy's TCP access-log entries (pure
logic; tests/integration/test_gateway_tcp_metrics.py has real Envoy traffic):
cumulative bytes per connection become deltas across periodic entries, a
connection is opened once and closed at its end entry, response flags take
Envoy's short codes, and the destination reporter names the caller by its
verified SPIFFE ID."""

from __future__ import annotations

from envoy.data.accesslog.v3 import accesslog_pb2
from mesh_control_plane.gateway.tcp_metrics import TcpMetrics
from mesh_control_plane.translate.tcp_telemetry import DESTINATION_SERVICE_TAG, DOWNSTREAM_PEER_TAG
from prometheus_client.parser import text_string_to_metric_families

from proxyless_mesh.telemetry import Workload

ME = Workload("edge", "infra", "spiffe://cluster.local/ns/infra/sa/edge", {"app": "edge"})
CLUSTER = "outbound|7000||db.shop.svc.cluster.local"
T = accesslog_pb2.AccessLogType


def entry(
    stream: str, kind: int, received: int, sent: int, **common: object
) -> accesslog_pb2.TCPAccessLogEntry:
    return accesslog_pb2.TCPAccessLogEntry(
        common_properties=accesslog_pb2.AccessLogCommon(
            stream_id=stream, access_log_type=kind, **{"upstream_cluster": CLUSTER, **common}
        ),
        connection_properties=accesslog_pb2.ConnectionProperties(
            received_bytes=received, sent_bytes=sent
        ),
    )


def scrape(metrics: TcpMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(metrics.prometheus()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_periodic_entries_add_only_what_is_new() -> None:
    metrics = TcpMetrics(ME)
    metrics.record("source", entry("a", T.TcpUpstreamConnected, 0, 0))
    metrics.record("source", entry("a", T.TcpPeriodic, 100, 10))
    metrics.record("source", entry("b", T.TcpConnectionEnd, 5, 7))  # never seen before
    metrics.record("source", entry("a", T.TcpPeriodic, 150, 30))
    found = scrape(metrics)
    values = {name: [v for _, v in rows] for name, rows in found.items()}
    assert values == {
        "istio_tcp_connections_opened_total": [2],
        "istio_tcp_connections_closed_total": [1],
        "istio_tcp_received_bytes_total": [155],
        "istio_tcp_sent_bytes_total": [37],
    }
    metrics.record("source", entry("a", T.TcpConnectionEnd, 160, 30))
    values = {name: [v for _, v in rows] for name, rows in scrape(metrics).items()}
    assert values["istio_tcp_connections_closed_total"] == [2]
    assert values["istio_tcp_received_bytes_total"] == [165]
    (labels, _) = scrape(metrics)["istio_tcp_sent_bytes_total"][0]
    assert labels["reporter"] == "source" and labels["source_workload"] == "edge"
    assert labels["source_principal"] == "unknown", "no mTLS: Istio reports no principal"
    assert labels["destination_service_name"] == "db" and labels["request_protocol"] == "tcp"
    assert "response_code" not in labels and "grpc_response_status" not in labels


def test_response_flags_and_the_destination_reporter() -> None:
    metrics = TcpMetrics(ME)
    failed = entry(
        "c",
        T.TcpConnectionEnd,
        0,
        0,
        response_flags=accesslog_pb2.ResponseFlags(
            upstream_connection_failure=True, no_healthy_upstream=True
        ),
        custom_tags={DOWNSTREAM_PEER_TAG: "spiffe://cluster.local/ns/shop/sa/web"},
    )
    metrics.record("destination", failed)
    ((labels, value),) = scrape(metrics)["istio_tcp_connections_closed_total"]
    assert value == 1
    assert labels["response_flags"] == "UH,UF"
    assert labels["source_principal"] == "spiffe://cluster.local/ns/shop/sa/web"
    assert labels["source_workload_namespace"] == "shop", "from the verified identity"
    assert labels["destination_principal"] == ME.principal
    assert labels["connection_security_policy"] == "mutual_tls"


def test_a_sidecars_inbound_entry_names_its_service_by_tag() -> None:
    """The inbound cluster (`inbound|9000||`) names no service: the tag does."""
    metrics = TcpMetrics(ME)
    inbound = entry(
        "d",
        T.TcpConnectionEnd,
        3,
        4,
        upstream_cluster="inbound|9000||",
        custom_tags={
            DOWNSTREAM_PEER_TAG: "spiffe://cluster.local/ns/shop/sa/web",
            DESTINATION_SERVICE_TAG: "echo.shop.svc.cluster.local",
        },
    )
    metrics.record("destination", inbound)
    ((labels, value),) = scrape(metrics)["istio_tcp_received_bytes_total"]
    assert value == 3
    assert labels["destination_service"] == "echo.shop.svc.cluster.local"
    assert labels["destination_service_name"] == "echo"
    assert labels["destination_service_namespace"] == "shop"
    assert labels["destination_workload"] == "edge" and labels["source_workload"] == "unknown"


def test_a_plaintext_caller_is_unknown_and_its_policy_none() -> None:
    metrics = TcpMetrics(ME)
    tags = {DOWNSTREAM_PEER_TAG: "-", DESTINATION_SERVICE_TAG: "db.shop"}
    plain = entry(
        "e", T.TcpConnectionEnd, 1, 1, upstream_cluster="inbound|9000||", custom_tags=tags
    )
    metrics.record("destination", plain)
    ((labels, _),) = scrape(metrics)["istio_tcp_connections_opened_total"]
    assert labels["connection_security_policy"] == "none"
    assert labels["source_principal"] == "unknown" and labels["destination_principal"] == "unknown"
