"""Gateway API through a real Envoy gateway and the library, on 127.0.0.1.

A Gateway API Gateway (programmed into `meshctl gateway run` labelled with
its name) and an HTTPRoute splitting 90/10 between two Services; a GAMMA
HTTPRoute (a Service as parent) that sends a meshed httpx client's requests
for `reviews` to `reviews-v2`; routes whose backend does not resolve (no such
Service, another namespace without a ReferenceGrant) answer 500 and say
ResolvedRefs=False.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gateway_support import running_gateway, wait_for_listener
from meshlab import LocalMesh, service_entry
from stats import assert_binomial

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap

pytestmark = pytest.mark.interop

NS = "shop"
V1 = f"reviews.{NS}.svc.cluster.local"
V2 = f"reviews-v2.{NS}.svc.cluster.local"
SPLIT_CALLS = 400
"""v2's share is checked at 5 sigma (tests/stats.py): 22-58 of 400 at p = 0.1."""


def _route(
    name: str,
    parent: dict[str, str],
    rules: list[dict[str, object]],
    namespace: str = NS,
    **spec: object,
) -> str:
    return json.dumps(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"parentRefs": [parent], "rules": rules, **spec},
        }
    )


def _config(lab: LocalMesh) -> None:
    v1, v2 = lab.start_http_backend("reviews", "v1"), lab.start_http_backend("reviews", "v2")
    names = {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [NS, "guests"]}
    admitted = {"matchExpressions": [names]}
    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "gatewayClassName": "istio",
            "listeners": [
                {
                    "name": "http",
                    "port": 80,
                    "protocol": "HTTP",
                    "hostname": "*.example.com",
                    # Routes of shop and of guests, not of strangers.
                    "allowedRoutes": {"namespaces": {"from": "Selector", "selector": admitted}},
                }
            ],
        },
    }
    split = _route(
        "split",
        {"name": "web"},
        [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                "backendRefs": [
                    {"name": "reviews", "port": 80, "weight": 90},
                    {"name": "reviews-v2", "port": 80, "weight": 10},
                ],
            }
        ],
        hostnames=["reviews.example.com"],
    )
    gamma = _route(
        "gamma",
        {"name": "reviews", "kind": "Service", "group": ""},
        [{"backendRefs": [{"name": "reviews-v2", "port": 80}]}],
    )
    # Unresolved backends: none such Service, and one of another namespace
    # without a ReferenceGrant there. The configuration loads; these rules answer 500.
    lost = _route(
        "lost",
        {"name": "web"},
        [{"backendRefs": [{"name": "nowhere", "port": 80}]}],
        hostnames=["lost.example.com"],
    )
    foreign = _route(
        "foreign",
        {"name": "web"},
        [{"backendRefs": [{"name": "reviews", "namespace": "other", "port": 80}]}],
        hostnames=["foreign.example.com"],
    )
    v2_endpoint = [("127.0.0.1", v2.ready["port"], {})]
    lab.write_config(
        "gateway-api.yaml",
        "\n---\n".join(
            [
                service_entry(V1, 80, [("127.0.0.1", v1.ready["port"], {})], namespace=NS),
                service_entry(V2, 80, [("127.0.0.1", v2.ready["port"], {})], namespace=NS),
                json.dumps(gateway),
                split,
                gamma,
                lost,
                foreign,
                # Routes of other namespaces to their own Service reviews (v2's server).
                *(
                    service_entry(f"reviews.{ns}.svc.cluster.local", 80, v2_endpoint, namespace=ns)
                    for ns in ("guests", "strangers")
                ),
                *(
                    _route(
                        ns[:-1],
                        {"name": "web", "namespace": NS},
                        [{"backendRefs": [{"name": "reviews", "port": 80}]}],
                        namespace=ns,
                        hostnames=[f"{ns[:-1]}.example.com"],
                    )
                    for ns in ("guests", "strangers")
                ),
            ]
        ),
    )


def test_an_http_route_splits_90_10_through_the_gateway(lab: LocalMesh) -> None:
    _config(lab)
    lab.start_control_plane()
    label = "gateway.networking.k8s.io/gateway-name=web"
    with running_gateway(lab, "web", NS, labels=(label,)) as admin, httpx.Client(timeout=10) as c:
        url = f"http://127.0.0.1:{wait_for_listener(admin, '0.0.0.0_80')}"
        headers = {"host": "reviews.example.com"}
        deadline = time.monotonic() + 20
        while c.get(url + "/api", headers=headers).status_code != 200:
            assert time.monotonic() < deadline, "no route through the gateway"
            time.sleep(0.1)
        versions = [
            c.get(url + "/api/items", headers=headers).json()["version"] for _ in range(SPLIT_CALLS)
        ]
        # The Gateway API status conditions, with the live control plane's view.
        meshctl = str(Path(sys.executable).parent / "meshctl")
        admin = ["--admin-address", lab.admin_address]
        status = subprocess.run(
            [meshctl, "gateway", "status", str(lab.config_dir), *admin],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        programmed = "Gateway shop/web: Programmed=True (Programmed): its Envoy ACKed"
        assert any(line.startswith(programmed) for line in status), status
        assert "HTTPRoute shop/split parent shop/web: Accepted=True (Accepted)" in status, status
        assert "HTTPRoute shop/split parent shop/web: ResolvedRefs=True (ResolvedRefs)" in status
        for route, reason, host in (
            ("lost", "BackendNotFound", "lost.example.com"),
            ("foreign", "RefNotPermitted", "foreign.example.com"),
        ):
            assert (
                f"HTTPRoute shop/{route} parent shop/web: ResolvedRefs=False ({reason})" in status
            )
            assert c.get(url + "/", headers={"host": host}).status_code == 500
        # allowedRoutes: a route of guests is served, one of strangers is not.
        assert c.get(url + "/", headers={"host": "guest.example.com"}).json()["version"] == "v2"
        assert c.get(url + "/", headers={"host": "stranger.example.com"}).status_code == 404
        assert (
            "HTTPRoute strangers/stranger parent shop/web: Accepted=False (NotAllowedByListeners): "
            "no listener of Gateway shop/web admits HTTPRoutes of namespace strangers "
            "(listeners[].allowedRoutes)"
        ) in status
        # PathPrefix matches whole segments: /apix is not under /api.
        assert c.get(url + "/apix", headers=headers).status_code == 404
        assert c.get(url + "/api", headers={"host": "other.test"}).status_code == 404
    assert versions.count("v1") + versions.count("v2") == SPLIT_CALLS
    assert_binomial(versions.count("v2"), SPLIT_CALLS, 0.1, "v2 at weight 10 of 100")


def test_a_gamma_route_changes_what_a_meshed_client_gets(lab: LocalMesh) -> None:
    _config(lab)
    lab.start_control_plane()
    mesh = Mesh(Bootstrap.from_file(lab.bootstrap("client-1", NS, "client")), mtls=False)
    with mesh, httpx.Client(transport=mesh.httpx_transport(), timeout=10) as client:
        got = {client.get(f"http://{V1}/").json()["version"] for _ in range(20)}
        assert got == {"v2"}  # the Service reviews, routed by its HTTPRoute
        assert client.get(f"http://{V2}/").json()["version"] == "v2"


GREETER = f"greeter.{NS}.svc.cluster.local"
GREETER_V2 = f"greeter-v2.{NS}.svc.cluster.local"


def test_a_gamma_grpc_route_sends_a_method_to_another_service(lab: LocalMesh) -> None:
    """A GRPCRoute on the Service greeter sends SayHello to greeter-v2 and
    every other method of greeter.Greeter to greeter: the library's gRPC
    channel follows it."""
    v1, v2 = lab.start_grpc_backend("greeter", "v1"), lab.start_grpc_backend("greeter", "v2")
    method = {"type": "Exact", "service": "greeter.Greeter", "method": "SayHello"}
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": "greeter", "namespace": NS},
        "spec": {
            "parentRefs": [{"name": "greeter", "kind": "Service", "group": ""}],
            "rules": [
                {
                    "matches": [{"method": method}],
                    "backendRefs": [{"name": "greeter-v2", "port": 50051}],
                },
                {
                    "matches": [{"method": {"service": "greeter.Greeter"}}],
                    "backendRefs": [{"name": "greeter", "port": 50051}],
                },
            ],
        },
    }
    entries = [
        service_entry(
            host, 50051, [("127.0.0.1", proc.ready["port"], {})], protocol="GRPC", namespace=NS
        )
        for host, proc in ((GREETER, v1), (GREETER_V2, v2))
    ]
    lab.write_config("grpc-route.yaml", "\n---\n".join([*entries, json.dumps(route)]))
    lab.start_control_plane()
    mesh = Mesh(Bootstrap.from_file(lab.bootstrap("grpc-client", NS, "client")), mtls=False)
    with mesh, mesh.grpc_channel(f"{GREETER}:50051") as channel:
        hello = channel.unary_unary("/greeter.Greeter/SayHello")
        assert {hello(b"hi", timeout=10).decode() for _ in range(10)} == {"greeter/v2"}
        stats = channel.unary_unary("/greeter.Greeter/Stats")
        # Answered by greeter (v1), which served none of the ten SayHello calls.
        assert json.loads(stats(b"", timeout=10))["calls"] == 0
