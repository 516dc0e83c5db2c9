"""outboundTrafficPolicy through a real Envoy sidecar (`meshctl proxy run`):
a host outside the registry is refused as Istio's sidecar refuses it
(REGISTRY_ONLY: 502 from the `block_all` route, Istio's BlackHoleCluster) or
passed through to the host its Host header names (ALLOW_ANY: a plain
`http.server` on 127.0.0.1 that no ServiceEntry declares answers). The mode is
the control plane's mesh default unless the workload's Sidecar sets one; an
edit of the Sidecar reaches the running Envoy."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from gateway_support import admin_get, running_proxy, serving, wait_for_listener
from meshlab import LocalMesh, service_entry, write_file_atomically

pytestmark = pytest.mark.interop

CATALOG = "catalog.web.mesh"


class _Outside(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"outside": True, "host": self.headers["host"], "path": self.path})
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def outside() -> Iterator[int]:
    """A plain HTTP server on 127.0.0.1 that is in no registry; its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Outside)
    server.daemon_threads = True
    with serving(server) as port:
        yield port


def _sidecar(mode: str, app: str) -> str:
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": app, "namespace": "web"},
        "spec": {
            "workloadSelector": {"labels": {"app": app}},
            "egress": [{"hosts": ["*/*"]}],
            "outboundTrafficPolicy": {"mode": mode},
        },
    }
    return json.dumps(doc)


def _get(outbound: int, host: str, path: str = "/") -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{outbound}{path}", headers={"host": host}, timeout=10)


def _stat(admin: str, name: str) -> int:
    """One of Envoy's counters (0 before it exists)."""
    stats = admin_get(admin, f"/stats?filter=^{name}$")
    return int(stats.split(":")[1]) if stats.strip() else 0


DIRECT = "http.outbound.rq_direct_response"  # block_all's 502s
PASSED = "cluster.PassthroughCluster.upstream_rq_200"


def _blocked(response: httpx.Response) -> None:
    assert response.status_code == 502, response.text
    assert response.text == ""  # Istio's block_all: a bare 502, nothing upstream


def test_registry_only_blocks_and_a_sidecar_allows_any(lab: LocalMesh, outside: int) -> None:
    """Mesh default REGISTRY_ONLY (the control plane flag): an unknown host is
    a 502 for the default workload, while a workload whose Sidecar says
    ALLOW_ANY reaches the server outside, by IP and by name."""
    lab.write_config("services.yaml", service_entry(CATALOG, 8080, [("127.0.0.1", 1, {})]))
    lab.write_config("sidecar.yaml", _sidecar("ALLOW_ANY", "loose"))
    lab.start_control_plane(extra_args=["--outbound-traffic-policy", "REGISTRY_ONLY"])
    with (
        running_proxy(lab, "strict", "web", {}, ("app=strict",)) as strict,
        running_proxy(lab, "loose", "web", {}, ("app=loose",)) as loose,
    ):
        strict_port = wait_for_listener(strict, "virtualOutbound")
        loose_port = wait_for_listener(loose, "virtualOutbound")
        before = _stat(strict, DIRECT)
        _blocked(_get(strict_port, f"127.0.0.1:{outside}"))
        _blocked(_get(strict_port, "unknown.external.test"))
        assert _stat(strict, DIRECT) == before + 2
        for host in (f"127.0.0.1:{outside}", f"localhost:{outside}"):
            passed = _get(loose_port, host, "/x?y=1")
            assert passed.status_code == 200, passed.text
            assert passed.json() == {"outside": True, "host": host, "path": "/x?y=1"}
        assert _stat(loose, PASSED) == 2
        assert _stat(strict, PASSED) == 0  # no PassthroughCluster under REGISTRY_ONLY
        # A mesh host is still routed by the mesh, not passed through: its
        # only endpoint (port 1) refuses, so Envoy answers 503, not 502.
        assert _get(strict_port, f"{CATALOG}:8080").status_code == 503
        assert _get(loose_port, f"{CATALOG}:8080").status_code == 503


def test_a_sidecars_registry_only_overrides_the_default_and_follows_edits(
    lab: LocalMesh, outside: int
) -> None:
    """No flag: Istio's default ALLOW_ANY passes through; the workload's
    Sidecar REGISTRY_ONLY blocks, and its edit to ALLOW_ANY reaches Envoy."""
    lab.write_config("services.yaml", service_entry(CATALOG, 8080, [("127.0.0.1", 1, {})]))
    lab.write_config("sidecar.yaml", _sidecar("REGISTRY_ONLY", "scoped"))
    lab.start_control_plane()
    host = f"127.0.0.1:{outside}"
    with (
        running_proxy(lab, "free", "web", {}, ("app=free",)) as free,
        running_proxy(lab, "scoped", "web", {}, ("app=scoped",)) as scoped,
    ):
        free_port = wait_for_listener(free, "virtualOutbound")
        scoped_port = wait_for_listener(scoped, "virtualOutbound")
        assert _get(free_port, host).json()["outside"] is True
        _blocked(_get(scoped_port, host))
        write_file_atomically(lab.config_dir / "sidecar.yaml", _sidecar("ALLOW_ANY", "scoped"))
        deadline = time.monotonic() + 30
        while True:  # the listener is replaced: ask its current port each time
            port = wait_for_listener(scoped, "virtualOutbound")
            try:
                if _get(port, host).status_code == 200:
                    break
            except httpx.TransportError:  # the old listener draining away
                pass
            assert time.monotonic() < deadline, "the Sidecar's ALLOW_ANY never reached Envoy"
            time.sleep(0.05)
