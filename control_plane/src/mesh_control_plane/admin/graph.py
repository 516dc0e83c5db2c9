"""The console's service graph, built from Istio's standard metrics.

Kiali draws its graph from `istio_requests_total` and
`istio_request_duration_milliseconds_bucket` summed by the source and
destination labels; so does this, with fewer features. Workloads and services
are nodes; a request from workload W to service S through to workload D makes
two edges, W -> S and S -> D (Kiali's "service nodes"), so a request that never
reached a server (503 UH/NC: destination_workload "unknown") still shows as an
edge into its service.

Each edge reads one reporter's series: the caller's side (`reporter="source"`)
for W -> S, the server's side (`reporter="destination"`) for S -> D, and the
other side when the preferred one has none (a caller outside the mesh reports
nothing; a request that reached no server has no destination report).
`connection_security_policy` is only known to the destination side, so the
mTLS lock reads destination series whichever side gave the rates.

Pure functions of Prometheus' query results: tested without Prometheus.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GraphQueries", "build_graph", "graph_queries", "valid_window"]

UNKNOWN = "unknown"
_WINDOW = re.compile(r"^[1-9][0-9]{0,3}[smh]$")

_SOURCE = ("source_workload", "source_workload_namespace")
_SERVICE = ("destination_service", "destination_service_name", "destination_service_namespace")
_DESTINATION = ("destination_workload", "destination_workload_namespace")
_OUTCOME = ("response_code", "grpc_response_status", "connection_security_policy")
_RATE_BY = ("reporter", *_SOURCE, *_SERVICE, *_DESTINATION, "request_protocol", *_OUTCOME)

Series = Sequence[Mapping[str, Any]]  # Prometheus' `data.result` of an instant vector


def valid_window(window: str) -> bool:
    """A PromQL range like `1m`, `30s`, `2h` (nothing else reaches a query)."""
    return bool(_WINDOW.match(window))


@dataclass(frozen=True)
class GraphQueries:
    """The three instant queries one graph needs."""

    rates: str
    p99_into_service: str  # W -> S edges
    p99_into_workload: str  # S -> D edges


def graph_queries(window: str) -> GraphQueries:
    if not valid_window(window):
        raise ValueError(f"window must look like 30s, 1m or 2h, got {window!r}")

    def p99(by: Sequence[str]) -> str:
        return (
            "histogram_quantile(0.99, sum by (le,reporter,"
            + ",".join(by)
            + f") (rate(istio_request_duration_milliseconds_bucket[{window}])))"
        )

    return GraphQueries(
        rates=f"sum by ({','.join(_RATE_BY)}) (rate(istio_requests_total[{window}])) > 0",
        p99_into_service=p99((*_SOURCE, "destination_service")),
        p99_into_workload=p99(("destination_service", *_DESTINATION)),
    )


@dataclass
class _Tally:
    """One edge's rates as one reporter saw them."""

    rps: float = 0.0
    errors: float = 0.0
    mtls: float = 0.0
    protocols: set[str] = field(default_factory=set)


@dataclass
class _Edge:
    by_reporter: dict[str, _Tally] = field(default_factory=lambda: defaultdict(_Tally))


def is_error(protocol: str, code: str, grpc_status: str) -> bool:
    """5xx (or no response: 0) over HTTP; a gRPC status other than OK."""
    if protocol == "grpc" and grpc_status not in ("", "0"):
        return True
    return code.startswith("5") or code == "0"


def _node_ids(labels: Mapping[str, str]) -> tuple[str, str, str]:
    source = _workload_id(
        labels.get("source_workload", ""), labels.get("source_workload_namespace")
    )
    service = f"svc:{labels.get('destination_service') or UNKNOWN}"
    destination = _workload_id(
        labels.get("destination_workload", ""), labels.get("destination_workload_namespace")
    )
    return source, service, destination


def _workload_id(name: str, namespace: str | None) -> str:
    if not name or name == UNKNOWN:
        return UNKNOWN
    return f"wl:{namespace or UNKNOWN}/{name}"


def build_graph(
    rates: Series, p99_into_service: Series, p99_into_workload: Series
) -> dict[str, Any]:
    """Nodes and edges (request rate, error rate, p99 latency, mTLS share)."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: dict[tuple[str, str], _Edge] = defaultdict(_Edge)
    for item in rates:
        labels, value = item["metric"], float(item["value"][1])
        source, service, destination = _node_ids(labels)
        _add_nodes(nodes, labels, source, service, destination)
        reporter = labels.get("reporter", "")
        protocol = labels.get("request_protocol", "")
        error = is_error(
            protocol, labels.get("response_code", ""), labels.get("grpc_response_status", "")
        )
        mtls = labels.get("connection_security_policy") == "mutual_tls"
        pairs = [(source, service)]
        if destination != UNKNOWN:
            pairs.append((service, destination))
        for pair in pairs:
            tally = edges[pair].by_reporter[reporter]
            tally.rps += value
            tally.errors += value if error else 0.0
            tally.mtls += value if mtls else 0.0
            tally.protocols.add(protocol)
    latency = _latencies(p99_into_service, into_service=True)
    latency.update(_latencies(p99_into_workload, into_service=False))
    return {
        "nodes": sorted(nodes.values(), key=lambda n: str(n["id"])),
        "edges": [
            _edge_json(pair, edge, latency.get(pair, {})) for pair, edge in sorted(edges.items())
        ],
    }


def _add_nodes(
    nodes: dict[str, dict[str, Any]],
    labels: Mapping[str, str],
    source: str,
    service: str,
    destination: str,
) -> None:
    for node_id, name_key, ns_key in (
        (source, "source_workload", "source_workload_namespace"),
        (destination, "destination_workload", "destination_workload_namespace"),
    ):
        if node_id == UNKNOWN:
            nodes.setdefault(UNKNOWN, {"id": UNKNOWN, "kind": UNKNOWN, "name": UNKNOWN})
        elif node_id not in nodes:
            nodes[node_id] = {
                "id": node_id,
                "kind": "workload",
                "name": labels.get(name_key, ""),
                "namespace": labels.get(ns_key, ""),
            }
    if service not in nodes:
        nodes[service] = {
            "id": service,
            "kind": "service",
            "name": labels.get("destination_service_name") or labels.get("destination_service", ""),
            "namespace": labels.get("destination_service_namespace", ""),
            "host": labels.get("destination_service", ""),
        }


def _latencies(series: Series, *, into_service: bool) -> dict[tuple[str, str], dict[str, float]]:
    """(edge) -> {reporter: p99 ms}; NaN (no requests in the window) left out."""
    out: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for item in series:
        labels, value = item["metric"], float(item["value"][1])
        if value != value:  # NaN
            continue
        source, service, destination = _node_ids(labels)
        pair = (source, service) if into_service else (service, destination)
        out[pair][labels.get("reporter", "")] = value
    return out


def _edge_json(
    pair: tuple[str, str], edge: _Edge, p99_by_reporter: Mapping[str, float]
) -> dict[str, Any]:
    into_service = pair[1].startswith("svc:")
    order = ("source", "destination") if into_service else ("destination", "source")
    reporter = next(r for r in (*order, *sorted(edge.by_reporter)) if r in edge.by_reporter)
    tally = edge.by_reporter[reporter]
    server_side = edge.by_reporter.get("destination")
    p99 = next((p99_by_reporter[r] for r in (reporter, *order) if r in p99_by_reporter), None)
    return {
        "source": pair[0],
        "target": pair[1],
        "reporter": reporter,
        "protocol": ",".join(sorted(p for p in tally.protocols if p)),
        "rps": tally.rps,
        "error_rate": tally.errors / tally.rps if tally.rps else 0.0,
        "p99_ms": p99,
        # share of the server-side rate carried over mTLS; None: no server saw it
        "mtls": server_side.mtls / server_side.rps if server_side and server_side.rps else None,
    }
