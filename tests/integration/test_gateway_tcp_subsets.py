"""Istio's tcp-echo sample through a real Envoy gateway: one service, two
versions, a VirtualService `tcp` rule splitting 80/20 by DestinationRule
subset (the destinations are short names, as in the sample). Each subset is
its own cluster, so the weights are the versions' shares."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from gateway_support import echo_server, first_echo, running_gateway, tcp_echo, wait_for_listener
from meshlab import LocalMesh

pytestmark = pytest.mark.interop

CONNECTIONS = 200
V2_SHARE = 0.2


def _doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": kind,
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def _sample(port_v1: int, port_v2: int) -> str:
    def to(subset: str, weight: int) -> dict[str, Any]:
        destination = {"host": "tcp-echo", "port": {"number": 9000}, "subset": subset}
        return {"destination": destination, "weight": weight}

    endpoints = [
        {"address": "127.0.0.1", "ports": {"tcp": port}, "labels": {"version": version}}
        for version, port in (("v1", port_v1), ("v2", port_v2))
    ]
    server = {"port": {"number": 31400, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]}
    subsets = [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")]
    rule = {"match": [{"port": 31400}], "route": [to("v1", 80), to("v2", 20)]}
    return "\n---\n".join(
        [
            _doc(
                "ServiceEntry",
                "tcp-echo",
                {
                    "hosts": ["tcp-echo.default.svc.cluster.local"],
                    "location": "MESH_EXTERNAL",
                    "resolution": "STATIC",
                    "ports": [{"number": 9000, "name": "tcp", "protocol": "TCP"}],
                    "endpoints": endpoints,
                },
            ),
            _doc(
                "Gateway",
                "tcp-echo-gateway",
                {"selector": {"istio": "tcp-echo"}, "servers": [server]},
            ),
            _doc(
                "DestinationRule", "tcp-echo-destination", {"host": "tcp-echo", "subsets": subsets}
            ),
            _doc(
                "VirtualService",
                "tcp-echo",
                {"hosts": ["*"], "gateways": ["tcp-echo-gateway"], "tcp": [rule]},
            ),
        ]
    )


def test_tcp_echo_splits_by_subset(lab: LocalMesh) -> None:
    with echo_server(b"v1") as port_v1, echo_server(b"v2") as port_v2:
        lab.write_config("tcp-echo.yaml", _sample(port_v1, port_v2))
        lab.start_control_plane()
        with running_gateway(lab, "tcp-echo", "default") as admin:
            port = wait_for_listener(admin, "0.0.0.0_31400")
            first_echo(port)
            tags = Counter(tcp_echo(port, b"y").partition(b":")[0] for _ in range(CONNECTIONS))
    # Binomial(200, 0.2): mean 40, sd 5.7; 5 sigma is +-28 connections. Without
    # subsets both versions would share one cluster: about 100 each.
    assert set(tags) == {b"v1", b"v2"}
    sigma = (CONNECTIONS * V2_SHARE * (1 - V2_SHARE)) ** 0.5
    assert abs(tags[b"v2"] - CONNECTIONS * V2_SHARE) <= 5 * sigma, tags
