"""Istio's TCP metrics from a real Envoy gateway (`meshctl gateway run`),
scraped from the agent's /stats/prometheus: connections through a TCP port to
an echo server (a WorkloadEntry without an identity), and through another to a STRICT meshed
service over ISTIO_MUTUAL. Opened and closed connections and the bytes each
way are counted exactly, with Istio's labels on the source reporter (the
gateway): its workload and, over mTLS, both SPIFFE IDs; the destination
workload from the endpoint's telemetry metadata; `request_protocol` tcp,
`connection_security_policy` unknown (the destination decides), response
flags "-". A connection still open is counted as opened, not closed, and its
bytes arrive with Envoy's periodic entry. A connection the upstream refused is
flagged UF."""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import socketserver
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gateway_support import agent_metrics, running_gateway, serving, wait_for_listener
from identities import (
    NAMESPACE,
    REVIEWS_HOST,
    listening_socket,
    peer_echo,
    service_entry,
    serving_asgi,
    workload_mesh,
)
from mesh_control_plane.translate.tcp_telemetry import TCP_FLUSH_SECONDS
from meshlab import LocalMesh
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.interop

GATEWAY = "tcp-metrics"
ECHO_HOST = "echo.external.test"
CONNECTIONS = 12
METRICS = (
    "istio_tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
    "istio_tcp_received_bytes_total",
    "istio_tcp_sent_bytes_total",
)
Samples = dict[str, list[tuple[dict[str, str], float]]]


class _LineEcho(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:  # until the client closes its side
            self.wfile.write(b"e:" + line)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 answering each line with `e:line`, open until
    the client closes."""
    with serving(_EchoServer(("127.0.0.1", 0), _LineEcho)) as port:
        yield port


def _exchange(port: int, data: bytes, half_close: bool = True) -> bytes:
    """Send `data`, close our side (unless the other side closes first, as an
    HTTP server after `Connection: close`), read until the other side closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        if half_close:
            conn.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := conn.recv(4096):
            reply += chunk
        return reply


def _doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, "namespace": NAMESPACE}
    return {"apiVersion": "networking.istio.io/v1", "kind": kind, "metadata": meta, "spec": spec}


def _config(echo_port: int, reviews_port: int) -> list[dict[str, Any]]:
    servers = [
        {"port": {"number": n, "name": f"tcp-{n}", "protocol": "TCP"}, "hosts": ["*"]}
        for n in (9000, 9100)
    ]
    echo = _doc(
        "ServiceEntry",
        "echo",
        {
            "hosts": [ECHO_HOST],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 7000, "name": "tcp", "protocol": "TCP"}],
            "workloadSelector": {"labels": {"app": "echo"}},
        },
    )
    echo_workload = {  # no serviceAccount: not a mesh workload, plaintext
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": "echo-1", "namespace": NAMESPACE},
        "spec": {
            "address": "127.0.0.1",
            "labels": {"app": "echo", "version": "v3"},
            "ports": {"tcp": echo_port},
        },
    }
    strict = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "strict", "namespace": NAMESPACE},
        "spec": {"mtls": {"mode": "STRICT"}},
    }
    to_echo = {"destination": {"host": ECHO_HOST, "port": {"number": 7000}}}
    to_reviews = {"destination": {"host": REVIEWS_HOST, "port": {"number": 80}}}
    routes = [
        {"match": [{"port": 9000}], "route": [to_echo]},
        {"match": [{"port": 9100}], "route": [to_reviews]},
    ]
    return [
        echo,
        echo_workload,
        service_entry(REVIEWS_HOST, reviews_port),
        strict,
        _doc("Gateway", GATEWAY, {"selector": {"istio": GATEWAY}, "servers": servers}),
        _doc("VirtualService", GATEWAY, {"hosts": ["*"], "gateways": [GATEWAY], "tcp": routes}),
    ]


def _scrape(lab: LocalMesh) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(agent_metrics(lab, GATEWAY)):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _value(samples: Samples, name: str, host: str) -> float:
    return sum(v for labels, v in samples.get(name, []) if labels["destination_service"] == host)


def _until(
    lab: LocalMesh, done: Callable[[Samples], bool], what: str, limit: float = 20.0
) -> Samples:
    """Scrape until `done` (the access logs reach the agent within a second)."""
    deadline = time.monotonic() + limit
    while not done(samples := _scrape(lab)):
        assert time.monotonic() < deadline, f"{what}: {json.dumps(samples, indent=1)[:3000]}"
        time.sleep(0.2)  # another process's counters: nothing to await
    return samples


def test_tcp_connections_and_bytes_are_counted_with_istios_labels(lab: LocalMesh) -> None:
    sock = listening_socket()
    request = b"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n"
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
            echo_port_gw = wait_for_listener(admin, "0.0.0.0_9000")
            mesh_port_gw = wait_for_listener(admin, "0.0.0.0_9100")
            deadline = time.monotonic() + 20
            while not _exchange(echo_port_gw, b"warm\n"):  # until the cluster has endpoints
                assert time.monotonic() < deadline, "the gateway never proxied a connection"
                time.sleep(0.1)
            warm = _until(
                lab,
                lambda s: _value(s, METRICS[1], ECHO_HOST) >= 1,
                "the warm-up connections",
            )
            before = [_value(warm, name, ECHO_HOST) for name in METRICS]

            sent = received = 0
            for i in range(CONNECTIONS):
                line = b"line %d of a tcp metrics test\n" % i
                reply = _exchange(echo_port_gw, line)
                assert reply == b"e:" + line
                sent, received = sent + len(line), received + len(reply)
            counted = _until(
                lab,
                lambda s: _value(s, METRICS[1], ECHO_HOST) >= before[1] + CONNECTIONS,
                "the closed connections",
            )
            # Bytes from the client (received) and to it (sent), as Istio counts them.
            assert [
                _value(counted, n, ECHO_HOST) - b for n, b in zip(METRICS, before, strict=True)
            ] == [
                CONNECTIONS,
                CONNECTIONS,
                sent,
                received,
            ]

            with socket.create_connection(("127.0.0.1", echo_port_gw), timeout=10) as held:
                held.sendall(b"still open\n")
                assert held.recv(100) == b"e:still open\n"
                still = _until(
                    lab,
                    lambda s: _value(s, METRICS[0], ECHO_HOST) == before[0] + CONNECTIONS + 1,
                    "the open connection",
                )
                assert _value(still, METRICS[1], ECHO_HOST) == before[1] + CONNECTIONS
                # Its bytes come with Envoy's periodic entry (every 15 s), before its end.
                flushed = _until(
                    lab,
                    lambda s: _value(s, METRICS[2], ECHO_HOST) == before[2] + sent + 11,
                    "the open connection's periodic entry",
                    limit=TCP_FLUSH_SECONDS + 10,
                )
                assert _value(flushed, METRICS[1], ECHO_HOST) == before[1] + CONNECTIONS
                assert _value(flushed, METRICS[3], ECHO_HOST) == before[3] + received + 13

            # wait_for_listener's probe of port 9100 (long closed) counts: a base.
            base = [_value(_scrape(lab), name, REVIEWS_HOST) for name in METRICS]
            reply = _exchange(mesh_port_gw, request, half_close=False)
            assert reply.startswith(b"HTTP/1.1 200"), reply
            mesh = _until(
                lab,
                lambda s: _value(s, METRICS[1], REVIEWS_HOST) == base[1] + 1,
                "the mTLS connection",
            )
            assert _value(mesh, METRICS[2], REVIEWS_HOST) == base[2] + len(request)
            assert _value(mesh, METRICS[3], REVIEWS_HOST) == base[3] + len(reply)
            assert "envoy_server_live" in agent_metrics(lab, GATEWAY), "Envoy's own, merged"
    sock.close()

    (plain,) = [
        labels for labels, _ in counted[METRICS[0]] if labels["destination_service"] == ECHO_HOST
    ]
    assert plain | {"reporter": "source"} == plain
    assert {k: plain[k] for k in _EXPECTED_PLAIN} == _EXPECTED_PLAIN, plain
    (secure,) = [
        labels for labels, _ in mesh[METRICS[0]] if labels["destination_service"] == REVIEWS_HOST
    ]
    gateway_id = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{GATEWAY}"
    assert secure["source_principal"] == gateway_id, secure
    assert secure["destination_principal"] == f"spiffe://cluster.local/ns/{NAMESPACE}/sa/reviews"
    # The ServiceEntry's endpoint names no workload; its certificate names the namespace.
    assert secure["destination_workload_namespace"] == NAMESPACE, secure
    assert secure["destination_cluster"] == "Kubernetes", "from the endpoint's metadata"
    assert secure["connection_security_policy"] == "unknown"
    assert secure["destination_service_name"] == REVIEWS_HOST.split(".")[0]


_EXPECTED_PLAIN = {
    "reporter": "source",
    "source_workload": GATEWAY,
    "source_workload_namespace": NAMESPACE,
    "source_principal": "unknown",  # no mTLS to a workload without an identity
    "source_canonical_service": GATEWAY,
    "destination_principal": "unknown",
    "destination_workload": "echo-1",  # the endpoint's telemetry metadata
    "destination_workload_namespace": NAMESPACE,
    "destination_canonical_service": "echo",
    "destination_canonical_revision": "v3",
    "destination_service": ECHO_HOST,
    "destination_service_name": "echo",
    "destination_service_namespace": "external",  # the host's second label
    "connection_security_policy": "unknown",
    "request_protocol": "tcp",
    "response_flags": "-",
}


def test_a_connection_the_upstream_refused_carries_envoys_response_flags(
    lab: LocalMesh,
) -> None:
    """Nothing listens at the echo workload: Envoy closes the client's
    connection, counted as opened and closed, flagged UF (upstream connection
    failure), as Istio's TCP metrics flag it."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    nothing = closed.getsockname()[1]
    closed.close()  # the port is free now: connecting to it is refused
    sock = listening_socket()
    docs = _config(nothing, sock.getsockname()[1])
    lab.write_config("tcp-metrics.yaml", "\n---\n".join(json.dumps(d) for d in docs))
    lab.start_control_plane(extra_args=["--leaf-ttl", "1h"])
    with running_gateway(lab, GATEWAY, NAMESPACE) as admin:
        port = wait_for_listener(admin, "0.0.0.0_9000")
        try:
            assert _exchange(port, b"anyone?\n") == b""
        except OSError as exc:  # Envoy may reset rather than close, even before our shutdown
            assert exc.errno in (errno.ECONNRESET, errno.ENOTCONN, errno.EPIPE), exc
        samples = _until(
            lab, lambda s: _value(s, METRICS[1], ECHO_HOST) >= 1, "the refused connection"
        )
    sock.close()
    rows = [
        (labels, v)
        for labels, v in samples[METRICS[1]]
        if labels["destination_service"] == ECHO_HOST
    ]
    flags = {labels["response_flags"] for labels, _ in rows}
    assert all("UF" in f.split(",") for f in flags), rows
    assert _value(samples, METRICS[0], ECHO_HOST) == _value(samples, METRICS[1], ECHO_HOST)
