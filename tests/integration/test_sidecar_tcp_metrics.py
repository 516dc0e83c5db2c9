"""Istio's TCP metrics from two real Envoy sidecars (`meshctl proxy run`),
scraped from each agent's /stats/prometheus.

shop/sleep dials its sidecar's outbound TCP listener for echo; the two
sidecars speak mesh mTLS (STRICT); the echo sidecar forwards to a plain TCP
server that answers one line and closes. Each connection is counted exactly
once on each side, with the same bytes: by sleep's sidecar as
reporter="source" (connection_security_policy unknown: the destination
decides), by echo's as reporter="destination" with connection_security_policy
mutual_tls and the caller's SPIFFE ID from its certificate. A real Prometheus
(Debian's) scraping both agents answers the `mutual_tls` variants of the TCP
panels of Istio's service and workload dashboards, Kiali's TCP edge from sleep
and its security query (the destination side's policy, by TCP bytes) with
the mTLS lock."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_support import agent_metrics, listener_ports
from identities import NAMESPACE
from meshlab import LocalMesh
from prometheus_client.parser import text_string_to_metric_families
from prometheus_lab import PrometheusServer
from test_gateway_tcp_dashboards import KIALI, KIALI_BY, SERVICE, fill, has_data
from test_gateway_tcp_metrics import METRICS
from test_sidecar_tcp import ECHO, ECHO_HOST, echo_and_sleep

pytestmark = pytest.mark.interop

SLEEP = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/sleep"
CONNECTIONS = 10
MUTUAL = 'connection_security_policy="mutual_tls"'
Rows = list[tuple[dict[str, str], float]]


@pytest.fixture
def sidecars(lab: LocalMesh) -> Iterator[tuple[int, int]]:
    """(the echo's declared port, sleep's local outbound port); agents named
    `tcp-echo` and `sleep` (their metrics: agent_metrics)."""
    with echo_and_sleep(lab) as (echo_port, _, sleep_admin):  # it probes echo's in plaintext
        yield echo_port, _outbound_port(sleep_admin)


def _outbound_port(admin: str) -> int:
    """sleep's outbound listener port, read without connecting (a probe
    would be a connection counted like the test's)."""
    name = f"outbound|9000||{ECHO_HOST}"
    deadline = time.monotonic() + 30
    while (port := listener_ports(admin).get(name)) is None:
        assert time.monotonic() < deadline, f"no listener {name}"
        time.sleep(0.05)
    return port


def _echo(port: int, line: bytes) -> bytes:
    """Send a line; what comes back before the server closes ("" when refused)."""
    received = b""
    with (
        contextlib.suppress(ConnectionError),
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
    ):
        sock.sendall(line)
        while chunk := sock.recv(1024):
            received += chunk
    return received


def _rows(lab: LocalMesh, agent: str, name: str, **match: str) -> Rows:
    """The samples of `name` whose labels include `match`, from one scrape."""
    return _matching(_scrape(lab, agent), name, match)


def _scrape(lab: LocalMesh, agent: str) -> dict[str, Rows]:
    samples: dict[str, Rows] = {}
    for family in text_string_to_metric_families(agent_metrics(lab, agent)):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _matching(samples: dict[str, Rows], name: str, match: dict[str, str]) -> Rows:
    return [(labels, v) for labels, v in samples.get(name, []) if match.items() <= labels.items()]


SOURCE = {"reporter": "source", "destination_service": ECHO_HOST, "response_flags": "-"}
DESTINATION = {
    "reporter": "destination",
    "destination_service": ECHO_HOST,
    "connection_security_policy": "mutual_tls",
    "source_principal": SLEEP,
}


def _counts(lab: LocalMesh) -> tuple[list[float], list[float]]:
    """The four counters on sleep's sidecar (source) and echo's (destination),
    each side from one scrape (its connections' first entries come before their
    last)."""
    sides = []
    for agent, match in (("sleep", SOURCE), ("tcp-echo", DESTINATION)):
        samples = _scrape(lab, agent)
        sides.append([sum(v for _, v in _matching(samples, name, match)) for name in METRICS])
    return sides[0], sides[1]


def _until(lab: LocalMesh, done: Callable[[Any], bool], what: str) -> Any:
    """Scrape both agents until `done` (the access logs arrive within a second)."""
    deadline = time.monotonic() + 20
    while not done(counts := _counts(lab)):
        assert time.monotonic() < deadline, f"{what}: {counts}"
        time.sleep(0.2)  # other processes' counters: nothing to await
    return counts


def test_both_sidecars_count_tcp_connections_and_bytes_exactly(
    lab: LocalMesh, sidecars: tuple[int, int]
) -> None:
    _, local = sidecars
    deadline = time.monotonic() + 20
    while _echo(local, b"warm\n") != b"hello warm\n":  # until the cluster has endpoints
        assert time.monotonic() < deadline, "sleep's sidecar never reached the echo"
        time.sleep(0.1)
    before = _until(
        lab,
        lambda c: c[0][1] >= 1 and c[1][1] >= 1 and c[0][0] == c[0][1] and c[1][0] == c[1][1],
        "the warm-up connection on both sides",
    )
    sent = received = 0
    for i in range(CONNECTIONS):
        line = b"line %d of the sidecar tcp metrics test\n" % i
        reply = _echo(local, line)
        assert reply == b"hello " + line
        sent, received = sent + len(line), received + len(reply)
    expected = [CONNECTIONS, CONNECTIONS, sent, received]  # opened, closed, from/to the caller
    counted = _until(
        lab,
        lambda c: c[0][1] >= before[0][1] + CONNECTIONS and c[1][1] >= before[1][1] + CONNECTIONS,
        "the connections' end on both sides",
    )
    for side, now, then in zip(("source", "destination"), counted, before, strict=True):
        agent = "sleep" if side == "source" else "tcp-echo"
        every = {name: _rows(lab, agent, name) for name in METRICS[:2]}  # all label sets
        assert [a - b for a, b in zip(now, then, strict=True)] == expected, (side, every)

    ((source, _),) = _rows(lab, "sleep", METRICS[1], **SOURCE)
    assert {k: source[k] for k in _EXPECTED_SOURCE} == _EXPECTED_SOURCE, source
    ((dest, _),) = _rows(lab, "tcp-echo", METRICS[1], **DESTINATION)
    assert {k: dest[k] for k in _EXPECTED_DESTINATION} == _EXPECTED_DESTINATION, dest
    # The plaintext probe to the STRICT port never became a mutual_tls connection.
    assert not _rows(lab, "tcp-echo", METRICS[0], connection_security_policy="mutual_tls",
                     source_principal="unknown")  # fmt: skip


_EXPECTED_SOURCE = {
    "source_workload": "sleep",
    "source_workload_namespace": NAMESPACE,
    "source_principal": SLEEP,  # mTLS: both identities known
    "source_canonical_service": "sleep",
    "source_app": "sleep",
    "destination_principal": ECHO,
    "destination_workload": "unknown",  # a ServiceEntry endpoint names no workload
    "destination_workload_namespace": NAMESPACE,  # the certificate's
    "destination_service_name": "echo",
    "destination_service_namespace": NAMESPACE,
    "connection_security_policy": "unknown",  # Istio: the destination decides
    "request_protocol": "tcp",
}
_EXPECTED_DESTINATION = {
    "source_workload": "unknown",  # TCP carries no metadata exchange
    "source_workload_namespace": NAMESPACE,  # the certificate's
    "source_principal": SLEEP,
    "destination_workload": "tcp-echo",
    "destination_workload_namespace": NAMESPACE,
    "destination_principal": ECHO,
    "destination_app": "tcp-echo",
    "destination_canonical_service": "tcp-echo",
    "destination_service_name": "echo",
    "destination_service_namespace": NAMESPACE,
    "request_protocol": "tcp",
    "response_flags": "-",
}


# The mutual_tls variants of the TCP panels of Istio's service and workload
# dashboards (their `!="mutual_tls"` twins: test_gateway_tcp_dashboards.py).
# Grafana's "All" fills $srcwl from label_values(source_workload): the
# destination side names TCP callers unknown (no metadata exchange).
MTLS_SERVICE = [
    query.replace('connection_security_policy!="mutual_tls"', MUTUAL)
    for query in SERVICE
    if "connection_security_policy" in query
]
MTLS_WORKLOAD_INBOUND = [
    f'round(sum(irate(istio_tcp_{way}_bytes_total{{reporter=~"$qrep", {MUTUAL}, '
    'destination_workload_namespace=~"$namespace", destination_workload=~"$workload", '
    'source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) '
    "by (source_workload, source_workload_namespace), 0.001)"
    for way in ("received", "sent")
]

KIALI_TCP_SECURITY = (
    f'sum(rate(istio_tcp_sent_bytes_total{{reporter="destination",destination_service_namespace='
    f'"{NAMESPACE}"}}[60s])) by ({KIALI_BY},connection_security_policy) > 0'
)


def test_the_mutual_tls_tcp_panels_read_the_destination_sidecar(
    lab: LocalMesh, sidecars: tuple[int, int], tmp_path: Path
) -> None:
    _, local = sidecars
    prometheus = PrometheusServer(tmp_path, scrape_interval="1s")
    stop = threading.Event()

    def traffic() -> None:  # connections through both sidecars, until stopped
        while not stop.is_set():
            _echo(local, b"ping\n")
            stop.wait(0.05)

    agents = [
        (lab.workdir / f"agent-{name}-metrics.txt").read_text().strip()
        for name in ("sleep", "tcp-echo")
    ]
    worker = threading.Thread(target=traffic)
    variables = {"$service": ECHO_HOST, "$workload": "tcp-echo", "$srcwl": "sleep|unknown"}
    first = fill(MTLS_SERVICE[0], **variables)
    try:
        prometheus.start({"sidecars": agents})
        worker.start()
        deadline = time.monotonic() + 60
        while not prometheus.query(first):  # scraped twice: irate has two points
            assert time.monotonic() < deadline, prometheus.query("istio_tcp_sent_bytes_total")
            time.sleep(0.2)  # Prometheus pushes nothing: poll its API
        for query in (*MTLS_SERVICE, *MTLS_WORKLOAD_INBOUND):
            rows = has_data(prometheus, fill(query, **variables))
            assert {r["metric"]["source_workload_namespace"] for r in rows} == {NAMESPACE}
        # Kiali's TCP edge (source reporter) and the mTLS lock of its security
        # appender (destination reporter) on the same connections.
        (edge,) = has_data(prometheus, KIALI[0])
        assert (edge["metric"]["source_workload"], edge["metric"]["destination_service"]) == (
            "sleep",
            ECHO_HOST,
        )
        (lock,) = has_data(prometheus, KIALI_TCP_SECURITY)
        assert lock["metric"]["connection_security_policy"] == "mutual_tls"
        assert lock["metric"]["destination_workload"] == "tcp-echo"
    finally:
        stop.set()
        worker.join(30)
        prometheus.stop()
