"""TCP through a real Envoy gateway: Gateway TCP servers and VirtualService
`tcp` rules matched by port send raw bytes to TCP echo servers outside the
mesh, one port to one server, another split by weight; and to a STRICT meshed
service over ISTIO_MUTUAL."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from typing import Any

import pytest
from gateway_support import echo_server, first_echo, running_gateway, tcp_echo, wait_for_listener
from identities import (
    NAMESPACE,
    REVIEWS_HOST,
    listening_socket,
    peer_echo,
    service_entry,
    serving_asgi,
    workload_mesh,
)
from meshlab import LocalMesh

pytestmark = pytest.mark.interop

NS = "default"
CONNECTIONS = 200
B_SHARE = 0.2


def _doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, "namespace": NS}
    return {"apiVersion": "networking.istio.io/v1", "kind": kind, "metadata": meta, "spec": spec}


def _entry(host: str, port: int) -> dict[str, Any]:
    return _doc(
        "ServiceEntry",
        host.split(".")[0],
        {
            "hosts": [host],
            "location": "MESH_EXTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 7000, "name": "tcp", "protocol": "TCP"}],
            "endpoints": [{"address": "127.0.0.1", "ports": {"tcp": port}}],
        },
    )


def _docs(port_a: int, port_b: int) -> list[dict[str, Any]]:
    servers = [
        {"port": {"number": n, "name": f"tcp-{n}", "protocol": "TCP"}, "hosts": ["*"]}
        for n in (9000, 9001)
    ]

    def to(host: str, weight: int) -> dict[str, Any]:
        return {"destination": {"host": host, "port": {"number": 7000}}, "weight": weight}

    return [
        _entry("echo-a.external.test", port_a),
        _entry("echo-b.external.test", port_b),
        _doc("Gateway", "tcp-edge", {"selector": {"istio": "tcp-edge"}, "servers": servers}),
        _doc(
            "VirtualService",
            "echo",
            {
                "hosts": ["*"],
                "gateways": ["tcp-edge"],
                "tcp": [
                    {"match": [{"port": 9000}], "route": [to("echo-a.external.test", 100)]},
                    {
                        "match": [{"port": 9001, "gateways": [f"{NS}/tcp-edge"]}],
                        "route": [
                            to("echo-a.external.test", 80),
                            to("echo-b.external.test", 20),
                        ],
                    },
                ],
            },
        ),
    ]


def test_tcp_ports_are_proxied_by_port_and_weight(lab: LocalMesh) -> None:
    with echo_server(b"a") as port_a, echo_server(b"b") as port_b:
        docs = _docs(port_a, port_b)
        lab.write_config("tcp.yaml", "\n---\n".join(json.dumps(d) for d in docs))
        lab.start_control_plane()
        with running_gateway(lab, "tcp-edge", NS) as admin:
            only_a = wait_for_listener(admin, "0.0.0.0_9000")
            split = wait_for_listener(admin, "0.0.0.0_9001")
            assert first_echo(only_a) == b"a:hello\n"
            first_echo(split)
            assert {tcp_echo(only_a, b"x%d" % i) for i in range(20)} == {
                b"a:x%d\n" % i for i in range(20)
            }
            tags = Counter(tcp_echo(split, b"y")[:1] for _ in range(CONNECTIONS))
    # Binomial(200, 0.2): mean 40, sd 5.7; 5 sigma is +-28 connections.
    assert set(tags) == {b"a", b"b"}
    sigma = (CONNECTIONS * B_SHARE * (1 - B_SHARE)) ** 0.5
    assert abs(tags[b"b"] - CONNECTIONS * B_SHARE) <= 5 * sigma, tags


def test_a_tcp_port_reaches_a_strict_meshed_service_as_the_gateway(lab: LocalMesh) -> None:
    """TCP bytes to a STRICT Python service: the gateway's upstream is
    ISTIO_MUTUAL by SDS (its workload certificate), so the service's inbound
    side verifies the gateway's SPIFFE ID; the bytes are an HTTP request the
    gateway never parses."""
    gateway = "tcp-ingress"
    sock = listening_socket()
    strict = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "strict", "namespace": NAMESPACE},
        "spec": {"mtls": {"mode": "STRICT"}},
    }
    server = {"port": {"number": 9100, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]}
    route = {"destination": {"host": REVIEWS_HOST, "port": {"number": 80}}}
    docs = [
        service_entry(REVIEWS_HOST, sock.getsockname()[1]),
        strict,
        _doc("Gateway", gateway, {"selector": {"istio": gateway}, "servers": [server]}),
        _doc(
            "VirtualService",
            gateway,
            {"hosts": ["*"], "gateways": [gateway], "tcp": [{"route": [route]}]},
        ),
    ]
    for doc in docs[2:]:
        doc["metadata"]["namespace"] = NAMESPACE
    lab.write_config("tcp-mesh.yaml", "\n---\n".join(json.dumps(d) for d in docs))
    lab.start_control_plane(extra_args=["--leaf-ttl", "1h"])
    reviews = workload_mesh(lab, "reviews-1", "reviews")
    request = b"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n"
    with (
        reviews,
        serving_asgi(peer_echo, reviews, sock),
        running_gateway(lab, gateway, NAMESPACE) as admin,
    ):
        port = wait_for_listener(admin, "0.0.0.0_9100")
        deadline = time.monotonic() + 20
        while not (reply := _exchange(port, request)).startswith(b"HTTP/1.1 200"):
            assert time.monotonic() < deadline, reply
            time.sleep(0.1)
    sock.close()
    body = reply.partition(b"\r\n\r\n")[2]  # chunked: size, identity, end
    assert f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{gateway}".encode() in body, reply


def _exchange(port: int, data: bytes) -> bytes:
    """Send `data` and read until the other side closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        reply = b""
        while chunk := conn.recv(4096):
            reply += chunk
        return reply
