"""Envoy originates TLS as the library does: the same ServiceEntries and
DestinationRules (SIMPLE with the operator's CA file, MUTUAL with a client
certificate, a wrong subjectAltNames) reach a real Envoy sidecar through our
control plane, and it calls the HTTPS servers outside the mesh by them."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from gateway_support import API, external_servers
from meshlab import LocalMesh
from test_envoy import admin_get, running_envoy, wait_for_outbound

pytestmark = pytest.mark.interop


def wait_for_healthy_host(admin: str, host: str) -> None:
    """Until Envoy has a healthy endpoint for `host`'s cluster: API's endpoint
    is a DNS name the control plane resolves after loading the config."""
    deadline = time.monotonic() + 30
    while not any(
        host in line and line.endswith("::health_flags::healthy")
        for line in admin_get(admin, "/clusters").splitlines()
    ):
        assert time.monotonic() < deadline, f"envoy never got an endpoint for {host}"
        time.sleep(0.05)


def test_envoy_originates_tls_by_the_destination_rules(lab: LocalMesh, tmp_path: Path) -> None:
    with external_servers(lab, tmp_path):
        lab.start_control_plane()
        with running_envoy(lab) as admin, httpx.Client(timeout=10) as client:
            url = f"http://127.0.0.1:{wait_for_outbound(admin)}"
            wait_for_healthy_host(admin, API)

            def get(host: str, path: str) -> httpx.Response:
                return client.get(url + path, headers={"host": f"{host}:80"})

            served = get(API, "/v1/items")
            assert served.status_code == 200, served.text
            assert served.json() == {"sni": API, "client": None, "path": "/v1/items"}
            both = get("mtls.external.test", "/x")
            assert both.json() == {
                "sni": "mtls.external.test",
                "client": "client.shop",
                "path": "/x",
            }
            # The server's certificate does not name x.test: Envoy refuses the
            # connection (503, upstream connect error), as the library does.
            refused = get("wrong.external.test", "/")
            assert refused.status_code == 503 and "connect" in refused.text, refused.text
            # Envoy is REGISTRY_ONLY as the control plane programs it: a host no
            # ServiceEntry declares has no route (404, Envoy's NR).
            assert get("unknown.external.test", "/").status_code == 404
