"""A Gateway TLS server with mode AUTO_PASSTHROUGH through a real Envoy
gateway: a meshed client's mTLS, with the SNI an Istio sidecar sets
(outbound_.PORT_.SUBSET_.HOST), reaches a STRICT Python service through the
gateway without a VirtualService; the gateway never decrypts it, so each side
sees the other's own identity."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from gateway_support import running_gateway, wait_for_listener
from identities import (
    FRONTEND,
    NAMESPACE,
    REVIEWS,
    REVIEWS_HOST,
    listening_socket,
    peer_echo,
    service_entry,
    serving_asgi,
    workload_mesh,
)
from meshlab import LocalMesh

from proxyless_mesh.integrations._tls_transport import TlsTransports
from proxyless_mesh.model import UpstreamTls

pytestmark = pytest.mark.interop


def _config(port: int) -> str:
    entry = service_entry(REVIEWS_HOST, port)
    entry["spec"]["endpoints"][0]["labels"] = {"version": "v1"}
    docs = [
        entry,
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": NAMESPACE},
            "spec": {
                "host": REVIEWS_HOST,
                "subsets": [
                    {"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"}},
                ],
            },
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": NAMESPACE},
            "spec": {"mtls": {"mode": "STRICT"}},
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "eastwest", "namespace": NAMESPACE},
            "spec": {
                "selector": {"istio": "eastwest"},
                "servers": [
                    {
                        "port": {"number": 15443, "name": "tls", "protocol": "TLS"},
                        "hosts": ["*/*.svc.cluster.local"],
                        "tls": {"mode": "AUTO_PASSTHROUGH"},
                    }
                ],
            },
        },
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


def test_auto_passthrough_routes_mtls_by_the_istio_sni(lab: LocalMesh) -> None:
    sock = listening_socket()
    lab.write_config("eastwest.yaml", _config(sock.getsockname()[1]))
    lab.start_control_plane(extra_args=["--leaf-ttl", "1h"])
    reviews = workload_mesh(lab, "reviews-1", "reviews")
    frontend = workload_mesh(lab, "frontend-1", "frontend")
    with (
        reviews,
        frontend,
        serving_asgi(peer_echo, reviews, sock),
        running_gateway(lab, "eastwest", NAMESPACE) as admin,
    ):
        url = f"http://127.0.0.1:{wait_for_listener(admin, '0.0.0.0_15443')}/"

        def get(sni: str) -> httpx.Response:
            """On a new connection (a pooled one would keep its first SNI)."""
            transport = TlsTransports(frontend).for_cluster(UpstreamTls((REVIEWS,)))
            assert transport is not None
            with httpx.Client(transport=transport, timeout=10) as client:
                return client.get(url, extensions={"sni_hostname": sni})

        deadline = time.monotonic() + 20
        while True:  # the SNI-DNAT cluster's endpoints may come after the listener
            try:
                whole = get(f"outbound_.80_._.{REVIEWS_HOST}")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "no AUTO_PASSTHROUGH chain"
                time.sleep(0.1)
        # The client verified the service's own identity (REVIEWS, not the
        # gateway's), and the service saw the client's: end-to-end mTLS.
        assert whole.status_code == 200 and whole.text == FRONTEND
        assert get(f"outbound_.80_.v1_.{REVIEWS_HOST}").text == FRONTEND  # the subset's
        with pytest.raises(httpx.TransportError):  # a subset with no instance
            get(f"outbound_.80_.v2_.{REVIEWS_HOST}")
        with pytest.raises(httpx.TransportError):  # no such service: no chain
            get("outbound_.80_._.other.svc.cluster.local")
        with pytest.raises(httpx.TransportError):  # not Istio's form: no chain
            get(REVIEWS_HOST)
    sock.close()
