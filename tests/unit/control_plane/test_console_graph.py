"""The console's service graph from Prometheus answers (pure: no Prometheus).

The series are shaped as Prometheus answers the three queries of
`graph_queries` (label sets of Istio's standard metrics, values as strings).
"""

from __future__ import annotations

from typing import Any

import pytest
from mesh_control_plane.admin.graph import build_graph, graph_queries, is_error, valid_window

REVIEWS = "reviews.default.svc.cluster.local"


def series(value: float, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1_700_000_000.0, str(value)]}


def request(reporter: str, value: float, **more: str) -> dict[str, Any]:
    """productpage -> reviews -> reviews-v1 unless `more` says otherwise."""
    labels = {
        "reporter": reporter,
        "source_workload": "productpage",
        "source_workload_namespace": "default",
        "destination_service": REVIEWS,
        "destination_service_name": "reviews",
        "destination_service_namespace": "default",
        "destination_workload": "reviews-v1",
        "destination_workload_namespace": "default",
        "request_protocol": "http",
        "response_code": "200",
        "grpc_response_status": "",
        "connection_security_policy": "unknown" if reporter == "source" else "mutual_tls",
        **more,
    }
    return series(value, **labels)


def edges_by_pair(graph: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["source"], e["target"]): e for e in graph["edges"]}


def test_a_call_is_two_edges_through_the_service_node_each_from_its_side() -> None:
    rates = [
        request("source", 3.0),
        request("source", 1.0, response_code="503"),
        request("destination", 2.5),  # the server saw fewer (say, one 503 was UH)
        request("destination", 0.5, response_code="503"),
    ]
    p99_service = [
        series(
            40.0,
            reporter="source",
            source_workload="productpage",
            source_workload_namespace="default",
            destination_service=REVIEWS,
        )
    ]
    p99_workload = [
        series(30.0, reporter="destination", destination_service=REVIEWS,
               destination_workload="reviews-v1", destination_workload_namespace="default"),
        series(35.0, reporter="source", destination_service=REVIEWS,
               destination_workload="reviews-v1", destination_workload_namespace="default"),
    ]  # fmt: skip
    graph = build_graph(rates, p99_service, p99_workload)

    assert [(n["id"], n["kind"], n["name"]) for n in graph["nodes"]] == [
        (f"svc:{REVIEWS}", "service", "reviews"),
        ("wl:default/productpage", "workload", "productpage"),
        ("wl:default/reviews-v1", "workload", "reviews-v1"),
    ]
    edges = edges_by_pair(graph)
    into_service = edges[("wl:default/productpage", f"svc:{REVIEWS}")]
    assert into_service["reporter"] == "source"  # the caller's view of its calls
    assert (into_service["rps"], into_service["error_rate"]) == (4.0, 0.25)
    assert into_service["p99_ms"] == 40.0
    assert into_service["mtls"] == 1.0  # from the server's series: all mutual_tls
    into_workload = edges[(f"svc:{REVIEWS}", "wl:default/reviews-v1")]
    assert into_workload["reporter"] == "destination"  # the server's view
    assert (into_workload["rps"], into_workload["error_rate"]) == (3.0, 0.5 / 3.0)
    assert into_workload["p99_ms"] == 30.0  # the destination's histogram, not the source's
    assert into_workload["protocol"] == "http"


def test_a_request_that_reached_no_server_still_makes_an_edge_into_its_service() -> None:
    rates = [
        request("source", 2.0, destination_workload="unknown", response_code="503"),
    ]
    graph = build_graph(rates, [], [])
    assert list(edges_by_pair(graph)) == [("wl:default/productpage", f"svc:{REVIEWS}")]
    [edge] = graph["edges"]
    assert (edge["error_rate"], edge["p99_ms"], edge["mtls"]) == (1.0, None, None)


def test_callers_outside_the_mesh_are_read_from_the_server_side() -> None:
    rates = [
        request("destination", 1.0, source_workload="unknown", source_workload_namespace="unknown",
                connection_security_policy="none"),
    ]  # fmt: skip
    graph = build_graph(rates, [], [])
    edges = edges_by_pair(graph)
    outside = edges[("unknown", f"svc:{REVIEWS}")]
    assert (outside["reporter"], outside["rps"], outside["mtls"]) == ("destination", 1.0, 0.0)
    assert {n["id"]: n["kind"] for n in graph["nodes"]}["unknown"] == "unknown"


def test_partial_mtls_is_a_share() -> None:
    rates = [
        request("destination", 3.0),
        request("destination", 1.0, connection_security_policy="none"),
    ]
    into_workload = edges_by_pair(build_graph(rates, [], []))[
        (f"svc:{REVIEWS}", "wl:default/reviews-v1")
    ]
    assert into_workload["mtls"] == 0.75


def test_nan_latency_is_left_out() -> None:
    p99 = [series(float("nan"), reporter="source", source_workload="productpage",
                  source_workload_namespace="default", destination_service=REVIEWS)]  # fmt: skip
    graph = build_graph([request("source", 1.0)], p99, [])
    assert edges_by_pair(graph)[("wl:default/productpage", f"svc:{REVIEWS}")]["p99_ms"] is None


@pytest.mark.parametrize(
    ("protocol", "code", "grpc_status", "error"),
    [
        ("http", "200", "", False),
        ("http", "404", "", False),
        ("http", "503", "", True),
        ("http", "0", "", True),  # no response at all
        ("grpc", "200", "0", False),
        ("grpc", "200", "5", True),  # NOT_FOUND: gRPC says so in the status, not the code
    ],
)
def test_what_counts_as_an_error(protocol: str, code: str, grpc_status: str, error: bool) -> None:
    assert is_error(protocol, code, grpc_status) is error


def test_window_is_a_range_and_nothing_else_reaches_promql() -> None:
    assert all(valid_window(w) for w in ("30s", "1m", "15m", "2h"))
    assert not any(valid_window(w) for w in ("", "0m", "1", "1m]) or vector(1", "1d", "-1m"))
    with pytest.raises(ValueError, match="window"):
        graph_queries("1m] or vector(1)")
    queries = graph_queries("5m")
    assert "rate(istio_requests_total[5m])" in queries.rates
    assert "istio_request_duration_milliseconds_bucket[5m]" in queries.p99_into_service
    for label in ("source_workload", "destination_workload", "connection_security_policy"):
        assert label in queries.rates
