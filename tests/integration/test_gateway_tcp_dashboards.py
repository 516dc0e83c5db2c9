"""Istio's dashboards and Kiali read the TCP metrics of a real Envoy gateway
(issue 23: "TCP metrics where the mesh carries TCP").

The gateway of test_gateway_tcp_metrics.py carries TCP to an echo workload
(a WorkloadEntry, plaintext) and to a STRICT meshed service (ISTIO_MUTUAL),
while a real Prometheus (Debian's) scrapes its agent. The TCP panels of Istio's
service, workload and mesh dashboards (their PromQL, template variables filled
as Grafana would) and Kiali's TCP graph queries must return data, and Kiali's
edge from the gateway to the echo workload must name both ends.

The panels' `connection_security_policy="mutual_tls"` variants are run in
test_sidecar_tcp_metrics.py: only a destination reporter says mutual_tls
(Istio: the source says unknown), and the destinations here are not Envoys
(the meshed service reports the HTTP requests it reads, not TCP); there an
Envoy sidecar is the destination.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from gateway_support import running_gateway, wait_for_listener
from identities import (
    NAMESPACE,
    REVIEWS_HOST,
    listening_socket,
    peer_echo,
    serving_asgi,
    workload_mesh,
)
from meshlab import LocalMesh
from prometheus_lab import PrometheusServer
from test_gateway_tcp_metrics import ECHO_HOST, GATEWAY, _config, _exchange, echo_server

pytestmark = pytest.mark.interop

VARIABLES = {
    "$__rate_interval": "1m",
    "$qrep": "destination|source",
    "$namespace": NAMESPACE,
    "$srcns": NAMESPACE,
    "$srcwl": GATEWAY,
    "$dstsvc": f"{ECHO_HOST}|{REVIEWS_HOST}",
}
_IN = ("received", "sent")
SERVICE = [  # $service
    *(
        f'sum(irate(istio_tcp_{way}_bytes_total{{reporter=~"$qrep", '
        'destination_service=~"$service"}[1m]))'
        for way in _IN
    ),
    *(
        f'round(sum(irate(istio_tcp_{way}_bytes_total{{reporter=~"$qrep", '
        'connection_security_policy!="mutual_tls", destination_service=~"$service", '
        'source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) '
        "by (source_workload, source_workload_namespace), 0.001)"
        for way in _IN
    ),
]
WORKLOAD_OUTBOUND = [  # $workload: the gateway
    f'round(sum(irate(istio_tcp_{way}_bytes_total{{reporter=~"$qrep", '
    'source_workload_namespace=~"$namespace", source_workload=~"$workload", '
    'destination_service=~"$dstsvc"}[$__rate_interval])) by (destination_service), 0.001)'
    for way in _IN
]
WORKLOAD_INBOUND = [  # $workload: the echo workload
    'sum(irate(istio_tcp_sent_bytes_total{reporter=~"$qrep", destination_workload_namespace=~'
    '"$namespace", destination_workload=~"$workload"}[1m])) + sum(irate(istio_tcp_received_'
    'bytes_total{reporter=~"$qrep", destination_workload_namespace=~"$namespace", '
    'destination_workload=~"$workload"}[1m]))',
    *(
        f'sum(irate(istio_tcp_{way}_bytes_total{{reporter=~"$qrep", '
        'destination_workload=~"$workload", destination_workload_namespace=~"$namespace", '
        'source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) '
        "by (source_workload, source_workload_namespace)"
        for way in _IN
    ),
]
MESH = [
    "label_join(sum by (destination_workload, destination_workload_namespace, "
    f'destination_service) (rate(istio_tcp_{way}_bytes_total{{reporter=~"source|waypoint"}}'
    '[$__rate_interval])), "destination_workload_var", ".", "destination_workload", '
    '"destination_workload_namespace")'
    for way in _IN
]
KIALI_BY = (
    "source_cluster,source_workload_namespace,source_workload,source_canonical_service,"
    "source_canonical_revision,destination_cluster,destination_service_namespace,"
    "destination_service,destination_service_name,destination_workload_namespace,"
    "destination_workload,destination_canonical_service,destination_canonical_revision"
)
KIALI = [
    f'sum(rate(istio_tcp_{way}_bytes_total{{reporter="source",source_workload_namespace='
    f'"{NAMESPACE}"}}[60s])) by ({KIALI_BY},response_flags) > 0'
    for way in _IN
]


def fill(query: str, **more: str) -> str:
    for name, value in sorted({**VARIABLES, **more}.items(), key=lambda kv: -len(kv[0])):
        query = query.replace(name, value)
    return query


def has_data(prometheus: PrometheusServer, query: str, wait: float = 30.0) -> list[dict[str, Any]]:
    """The query's finite rows, polled for up to `wait` seconds: each agent is
    scraped on its own schedule and a rate needs two points of its series."""
    deadline = time.monotonic() + wait
    while True:
        result = prometheus.query(query)
        finite = [r for r in result if math.isfinite(float(r["value"][1]))]
        if finite or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # Prometheus pushes nothing: poll its API
    assert finite, f"no data for panel query:\n{query}\nanswer: {result}"
    return finite


def test_istio_tcp_panels_and_kiali_read_the_gateway(lab: LocalMesh, tmp_path: Path) -> None:
    sock = listening_socket()
    request = b"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n"
    prometheus = PrometheusServer(tmp_path, scrape_interval="1s")
    stop = threading.Event()
    with echo_server() as echo_port:
        docs = _config(echo_port, sock.getsockname()[1])
        lab.write_config("tcp-metrics.yaml", "\n---\n".join(json.dumps(d) for d in docs))
        lab.start_control_plane(extra_args=["--leaf-ttl", "1h"])
        reviews = workload_mesh(lab, "reviews-1", "reviews")
        with (
            reviews,
            serving_asgi(peer_echo, reviews, sock),
            running_gateway(lab, GATEWAY, NAMESPACE) as admin,
        ):
            ports = (
                wait_for_listener(admin, "0.0.0.0_9000"),
                wait_for_listener(admin, "0.0.0.0_9100"),
            )

            def traffic() -> None:  # connections to both, until stopped
                while not stop.is_set():
                    _exchange(ports[0], b"ping\n")
                    _exchange(ports[1], request, half_close=False)
                    stop.wait(0.05)

            metrics = (lab.workdir / f"agent-{GATEWAY}-metrics.txt").read_text().strip()
            worker = threading.Thread(target=traffic)
            try:
                prometheus.start({"gateway": [metrics]})
                worker.start()
                run_panels(prometheus)
            finally:
                stop.set()
                worker.join(30)
                prometheus.stop()
    sock.close()


def run_panels(prometheus: PrometheusServer) -> None:
    deadline = time.monotonic() + 60
    while len(prometheus.query(KIALI[0])) < 2:  # both services' edges, scraped twice
        assert time.monotonic() < deadline, prometheus.query("istio_tcp_sent_bytes_total")
        time.sleep(0.2)  # Prometheus pushes nothing: poll its API
    for service in (ECHO_HOST, REVIEWS_HOST):
        for query in SERVICE:
            has_data(prometheus, fill(query, **{"$service": service}))
    for query in WORKLOAD_OUTBOUND:
        has_data(prometheus, fill(query, **{"$workload": GATEWAY}))
    for query in WORKLOAD_INBOUND:
        has_data(prometheus, fill(query, **{"$workload": "echo-1"}))
    for query in MESH:
        has_data(prometheus, fill(query))
    edges = {
        (
            e["metric"]["source_workload"],
            e["metric"]["source_canonical_service"],
            e["metric"]["destination_workload"],
            e["metric"]["destination_canonical_service"],
            e["metric"]["destination_canonical_revision"],
            e["metric"]["destination_service_name"],
            e["metric"]["destination_workload_namespace"],
        )
        for query in KIALI
        for e in has_data(prometheus, query)
    }
    assert edges == {
        (GATEWAY, GATEWAY, "echo-1", "echo", "v3", "echo", NAMESPACE),
        (GATEWAY, GATEWAY, "unknown", "unknown", "unknown", "reviews", NAMESPACE),
    }
