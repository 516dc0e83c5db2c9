"""Envoy originates TLS as the library does: the same ServiceEntries and
DestinationRules (SIMPLE with the operator's CA file, MUTUAL with a client
certificate, a wrong subjectAltNames) reach a real Envoy sidecar through our
control plane, and it calls the HTTPS servers outside the mesh by them."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import API, external_servers
from meshlab import LocalMesh
from test_envoy import running_envoy, wait_for_outbound

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap

pytestmark = pytest.mark.interop


def test_envoy_originates_tls_by_the_destination_rules(lab: LocalMesh, tmp_path: Path) -> None:
    with external_servers(lab, tmp_path):
        lab.start_control_plane(extra_args=["--outbound-traffic-policy", "REGISTRY_ONLY"])
        with running_envoy(lab) as admin, httpx.Client(timeout=10) as client:
            # No wait for API's endpoint (a DNS name): the control plane
            # resolved it before it published the config.
            url = f"http://127.0.0.1:{wait_for_outbound(admin)}"

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
            # REGISTRY_ONLY (the mesh default flag): a host no ServiceEntry
            # declares gets Istio's block_all, a 502 (BlackHoleCluster).
            assert get("unknown.external.test", "/").status_code == 502


LATE = "late.external.test"


def status(lab: LocalMesh) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{lab.admin_address}/status", timeout=5) as response:
        return dict(json.loads(response.read()))


def acked_by_envoy(lab: LocalMesh, before: str) -> bool:
    """The control plane serves a version other than `before` and Envoy has
    ACKed it for the types that name the new host (its listener is the same
    and not sent again)."""
    now = status(lab)
    envoy = [c for c in now["clients"] if c["node_id"] == "envoy-1"]
    return (
        now["version"] != before
        and len(envoy) == 1
        and all(envoy[0]["types"][t]["acked"] == now["version"] for t in ("CDS", "EDS", "RDS"))
    )


@pytest.mark.parametrize("client", ["library", "envoy"])
def test_a_dns_entry_added_at_runtime_serves_its_first_request(
    lab: LocalMesh, tmp_path: Path, client: str
) -> None:
    """A ServiceEntry whose endpoint is a DNS name ("localhost", which nothing
    before it named), added while the library or Envoy runs: the first request
    right after the control plane reports the config loaded (library) or
    Envoy ACKs it succeeds. The control plane resolves the name before
    publishing the config (as Envoy warms a DNS cluster); publishing first
    left the cluster empty until the resolution's push, and this request
    failed 'no healthy upstream'."""
    with external_servers(lab, tmp_path, api_address="127.0.0.1"):
        lab.start_control_plane()
        bootstrap = Bootstrap.from_file(lab.bootstrap("client-1", "shop", "client"))
        with (
            running_envoy(lab) as admin,
            Mesh(bootstrap) as mesh,
            httpx.Client(transport=mesh.httpx_transport(), timeout=10) as library,
            httpx.Client(timeout=10) as plain,
        ):
            url = f"http://127.0.0.1:{wait_for_outbound(admin)}"
            assert library.get(f"http://{API}/").status_code == 200  # the mesh is up
            before = status(lab)["version"]
            lab.write_config("late.yaml", late_entry(LATE, lab))
            deadline = time.monotonic() + 30
            if client == "library":
                while status(lab)["version"] == before:
                    assert time.monotonic() < deadline, "the config never loaded"
                    time.sleep(0.01)
                served = library.get(f"http://{LATE}/first")
            else:
                while not acked_by_envoy(lab, before):
                    assert time.monotonic() < deadline, status(lab)
                    time.sleep(0.01)
                served = plain.get(url + "/first", headers={"host": f"{LATE}:80"})
            assert served.status_code == 200, served.text
            assert served.json()["path"] == "/first"


def late_entry(host: str, lab: LocalMesh) -> str:
    """API's ServiceEntry and SIMPLE rule, for `host`, its endpoint named
    "localhost" (resolution DNS); the rule names API (the server's
    certificate) as sni and SAN."""
    docs = [json.loads(d) for d in (lab.config_dir / "external.yaml").read_text().split("---")]
    entry, rule = (d for d in docs if API in (d["spec"].get("hosts") or [d["spec"].get("host")]))
    name = host.replace(".", "-")
    entry["metadata"]["name"] = rule["metadata"]["name"] = name
    entry["spec"]["hosts"], rule["spec"]["host"] = [host], host
    entry["spec"]["resolution"] = "DNS"
    entry["spec"]["endpoints"][0]["address"] = "localhost"
    rule["spec"]["trafficPolicy"]["tls"] |= {"sni": API, "subjectAltNames": [API]}
    return "\n---\n".join(json.dumps(d) for d in (entry, rule))
