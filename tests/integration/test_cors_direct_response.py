"""VirtualService corsPolicy and directResponse through the httpx mesh
transport, against a real backend and control plane (issue 19): what Envoy's
CORS filter and a direct-response route do, the backend counting what
reached it."""

from __future__ import annotations

import json
from typing import Any

import httpx
from meshlab import LocalMesh, service_entry

from proxyless_mesh import Mesh

HOST = "shop.default.mesh"
ALLOWED = "https://app.example.com"


def vs(http: list[dict[str, Any]]) -> str:
    return json.dumps(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "shop", "namespace": "default"},
            "spec": {"hosts": [HOST], "http": http},
        }
    )


def served(backend: Any) -> int:
    stats = httpx.get(f"http://127.0.0.1:{backend.ready['port']}/__stats").json()
    return int(stats["requests"])


def test_cors_policy_and_direct_response(lab: LocalMesh) -> None:
    backend = lab.start_http_backend("shop", "v1")
    lab.write_config(
        "shop.yaml", service_entry(HOST, 8080, [("127.0.0.1", backend.ready["port"], {})])
    )
    destination = [{"destination": {"host": HOST}}]
    lab.write_config(
        "route.yaml",
        vs(
            [
                {
                    "match": [{"uri": {"prefix": "/maintenance"}}],
                    "directResponse": {"status": 503, "body": {"string": "down for upgrade"}},
                },
                {
                    "match": [{"uri": {"prefix": "/strict"}}],
                    "corsPolicy": {
                        "allowOrigins": [{"exact": ALLOWED}],
                        "unmatchedPreflights": "IGNORE",
                    },
                    "route": destination,
                },
                {
                    "corsPolicy": {
                        "allowOrigins": [{"exact": ALLOWED}, {"regex": r"https://.*\.shop\.test"}],
                        "allowMethods": ["GET", "POST"],
                        "allowHeaders": ["x-token", "content-type"],
                        "exposeHeaders": ["x-version"],
                        "maxAge": "24h",
                        "allowCredentials": True,
                    },
                    "route": destination,
                },
            ]
        ),
    )
    lab.start_control_plane()
    with Mesh.from_bootstrap(lab.bootstrap("c"), preload=[f"{HOST}:8080"]) as mesh:
        client = httpx.Client(transport=mesh.httpx_transport())
        base = f"http://{HOST}:8080"
        before = served(backend)

        # A direct response: the mesh answers, the backend never sees it.
        down = client.get(f"{base}/maintenance/now")
        assert (down.status_code, down.text) == (503, "down for upgrade")

        # An allowed preflight is answered by the mesh with the allow headers.
        preflight = client.options(
            f"{base}/items",
            headers={"origin": ALLOWED, "access-control-request-method": "POST"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ALLOWED
        assert preflight.headers["access-control-allow-methods"] == "GET,POST"
        assert preflight.headers["access-control-allow-headers"] == "x-token,content-type"
        assert preflight.headers["access-control-max-age"] == "86400"
        assert preflight.headers["access-control-allow-credentials"] == "true"
        assert served(backend) == before  # neither reached the backend

        # A request from an allowed origin (regex) is forwarded; the answer carries CORS.
        origin = "https://cart.shop.test"
        simple = client.get(f"{base}/items", headers={"origin": origin})
        assert simple.status_code == 200
        assert simple.headers["access-control-allow-origin"] == origin
        assert simple.headers["access-control-expose-headers"] == "x-version"
        assert simple.headers["access-control-allow-credentials"] == "true"
        assert served(backend) == before + 1

        # No Origin, or an origin not allowed: forwarded untouched, no CORS headers.
        plain = client.get(f"{base}/items")
        other = client.get(f"{base}/items", headers={"origin": "https://evil.test"})
        for answer in (plain, other):
            assert answer.status_code == 200
            assert "access-control-allow-origin" not in answer.headers
        # A preflight from an origin not allowed is forwarded (FORWARD, the default).
        forwarded = client.options(
            f"{base}/items",
            headers={"origin": "https://evil.test", "access-control-request-method": "GET"},
        )
        assert "access-control-allow-origin" not in forwarded.headers
        assert served(backend) == before + 4

        # unmatchedPreflights IGNORE: such a preflight is answered 200 without CORS.
        ignored = client.options(
            f"{base}/strict",
            headers={"origin": "https://evil.test", "access-control-request-method": "GET"},
        )
        assert ignored.status_code == 200
        assert "access-control-allow-origin" not in ignored.headers
        assert served(backend) == before + 4
        client.close()
