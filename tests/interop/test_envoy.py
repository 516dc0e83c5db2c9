"""Envoy 1.40 as a third-party xDS client of our control plane: it must
accept (ACK) every listener, route, cluster and endpoint we serve, and proxy
a request by them."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import httpx
import pytest
from meshlab import LocalMesh
from processes import envoy_binary, stop
from stats import assert_binomial

pytestmark = pytest.mark.interop

HOST = "reviews.default.mesh"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def envoy_bootstrap(xds_port: int, api_type: str = "GRPC") -> dict:  # type: ignore[type-arg]
    """ADS over State of the World ("GRPC") or Delta ("DELTA_GRPC")."""
    return {
        "node": {"id": "envoy-1", "cluster": "sidecar", "metadata": {"OUTBOUND_PORT": "0"}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        HTTP_OPTIONS: {
                            "@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }


@pytest.fixture(params=["GRPC", "DELTA_GRPC"])
def api_type(request: pytest.FixtureRequest) -> str:
    """Envoy's ADS variant: State of the World, then Delta (incremental)."""
    return str(request.param)


@pytest.fixture
def envoy(lab_with_reviews: LocalMesh, api_type: str) -> Iterator[str]:
    """Start Envoy against the lab's control plane; yield its admin address."""
    with running_envoy(lab_with_reviews, api_type) as admin:
        yield admin


@contextlib.contextmanager
def running_envoy(lab: LocalMesh, api_type: str = "GRPC") -> Iterator[str]:
    """Envoy following `lab`'s (started) control plane; yields its admin address
    and stops Envoy on exit."""
    xds_port = int(lab.xds_address.rsplit(":", 1)[1])
    config = lab.workdir / "envoy.json"
    config.write_text(json.dumps(envoy_bootstrap(xds_port, api_type)))
    admin_file = lab.workdir / "envoy-admin.txt"
    log = open(lab.workdir / "envoy.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [
            envoy_binary(),
            "-c",
            str(config),
            "--admin-address-path",
            str(admin_file),
            "--disable-hot-restart",
            "--base-id",
            str(int(time.time() * 1000) % 100_000),
            "-l",
            "info",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not admin_file.exists() or not admin_file.read_text().strip():
            assert proc.poll() is None, (lab.workdir / "envoy.log").read_text()
            assert time.monotonic() < deadline, "envoy admin did not come up"
            time.sleep(0.02)
        yield admin_file.read_text().strip()
    finally:
        stop(proc)
        log.close()


def admin_get(address: str, path: str) -> str:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
        return str(response.read().decode())


def outbound_port(admin: str) -> int | None:
    listeners = json.loads(admin_get(admin, "/listeners?format=json"))
    for listener in listeners.get("listener_statuses", []):
        if listener["name"] == "virtualOutbound":
            return int(listener["local_address"]["socket_address"]["port_value"])
    return None


@pytest.fixture
def lab_with_reviews(lab: LocalMesh) -> LocalMesh:
    v1 = lab.start_http_backend("reviews", "v1")
    v2 = lab.start_http_backend("reviews", "v2")
    lab.deploy_versions(HOST, 8080, {"v1": v1, "v2": v2}, {"v1": 0, "v2": 100})
    lab.start_control_plane()
    return lab


@pytest.mark.usefixtures("xds_engine")
def test_envoy_acks_everything_and_routes_by_it(
    lab_with_reviews: LocalMesh, envoy: str, api_type: str
) -> None:
    lab = lab_with_reviews
    deadline = time.monotonic() + 30
    while (port := outbound_port(envoy)) is None:
        assert time.monotonic() < deadline, "envoy never got the outbound listener"
        time.sleep(0.05)
    # Routed by our VirtualService (100% to v2) through Envoy's listener.
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        deadline = time.monotonic() + 15
        while True:
            response = client.get("/reviews", headers={"host": f"{HOST}:8080"})
            if response.status_code == 200:
                break
            assert time.monotonic() < deadline, response.text
            time.sleep(0.05)
        assert {
            client.get("/", headers={"host": f"{HOST}:8080"}).json()["version"] for _ in range(20)
        } == {"v2"}
    # Envoy's own counters: no update of any kind was rejected.
    stats = admin_get(envoy, "/stats?filter=update_rejected")
    rejected = [line for line in stats.splitlines() if not line.endswith(": 0")]
    assert stats.strip() and not rejected, stats
    # And the control plane recorded an ACK, no NACK, for each type Envoy asked for.
    with urllib.request.urlopen(f"http://{lab.admin_address}/status", timeout=5) as r:
        status = json.loads(r.read())
    (client_status,) = [c for c in status["clients"] if c["node_id"] == "envoy-1"]
    assert client_status["protocol"] == ("delta" if api_type == "DELTA_GRPC" else "sotw")
    types = client_status["types"]
    assert len(types) == 4, types
    for name, record in types.items():
        assert record["acked"] and not record["nacked"], (name, record)


def wait_for_outbound(admin: str) -> int:
    deadline = time.monotonic() + 30
    while (port := outbound_port(admin)) is None:
        assert time.monotonic() < deadline, "envoy never got the outbound listener"
        time.sleep(0.05)
    return port


LOCALITY_CALLS = 400
"""v1's count is checked at 5 sigma (tests/stats.py: 280-360 of 400) as if Envoy
picked localities at random (its EDF scheduler is in fact near-deterministic);
the flat 50/50 that Envoy does without ``locality_weighted_lb_config`` is 15
sigma away."""


def test_envoy_honours_distribute_locality_weights(lab: LocalMesh) -> None:
    """A DestinationRule ``distribute`` of 80/20 over two localities (one instance
    each) reaches a real Envoy as locality weights it applies."""
    a, b = lab.start_http_backend("reviews", "v1"), lab.start_http_backend("reviews", "v2")
    endpoints = [
        {"address": "127.0.0.1", "ports": {"http": proc.ready["port"]}, "locality": loc}
        for proc, loc in ((a, "r/a"), (b, "r/b"))
    ]
    entry = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "reviews"},
        "spec": {
            "location": "MESH_INTERNAL",
            "hosts": [HOST],
            "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC",
            "endpoints": endpoints,
        },
    }
    distribute = {"distribute": [{"from": "*", "to": {"r/a/*": 80, "r/b/*": 20}}]}
    rule = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews"},
        "spec": {
            "host": HOST,
            "trafficPolicy": {"loadBalancer": {"localityLbSetting": distribute}},
        },
    }
    lab.write_config("reviews.yaml", json.dumps(entry) + "\n---\n" + json.dumps(rule))
    lab.start_control_plane()
    with running_envoy(lab) as admin, httpx.Client(timeout=5) as client:
        url = f"http://127.0.0.1:{wait_for_outbound(admin)}/"
        headers = {"host": f"{HOST}:8080"}
        deadline = time.monotonic() + 15
        while client.get(url, headers=headers).status_code != 200:
            assert time.monotonic() < deadline, "no route through envoy"
            time.sleep(0.05)
        versions = [
            client.get(url, headers=headers).json()["version"] for _ in range(LOCALITY_CALLS)
        ]
    assert versions.count("v1") + versions.count("v2") == LOCALITY_CALLS
    assert_binomial(versions.count("v1"), LOCALITY_CALLS, 0.8, "v1 at locality weight 80")
