"""Rewrites, redirects and header changes from a VirtualService, applied by
the httpx mesh transport against a real backend (issue 4)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from meshlab import LocalMesh, service_entry

from proxyless_mesh import Mesh

HOST = "shop.default.mesh"


def vs(http: list[dict[str, Any]]) -> str:
    return json.dumps(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "shop", "namespace": "default"},
            "spec": {"hosts": [HOST], "http": http},
        }
    )


def test_rewrite_redirect_and_headers(lab: LocalMesh) -> None:
    backend = lab.start_http_backend("shop", "v1")
    lab.write_config(
        "shop.yaml", service_entry(HOST, 8080, [("127.0.0.1", backend.ready["port"], {})])
    )
    lab.write_config(
        "route.yaml",
        vs(
            [
                {
                    "match": [{"uri": {"prefix": "/old"}}],
                    "redirect": {"uri": "/new", "redirectCode": 302},
                },
                {
                    "match": [{"uri": {"prefix": "/api/"}}],
                    "rewrite": {"uri": "/v2/", "authority": "internal.shop"},
                    "headers": {
                        "request": {"set": {"x-mesh": "yes"}},
                        "response": {"add": {"x-served-by": "mesh"}, "remove": ["x-version"]},
                    },
                    "route": [{"destination": {"host": HOST}}],
                },
            ]
        ),
    )
    lab.start_control_plane()
    with Mesh.from_bootstrap(lab.bootstrap("c"), preload=[f"{HOST}:8080"]) as mesh:
        client = httpx.Client(transport=mesh.httpx_transport())
        moved = client.get(f"http://{HOST}:8080/old/page?x=1")
        assert moved.status_code == 302
        # Envoy keeps the query on a path redirect unless strip_query is set.
        assert moved.headers["location"] == f"http://{HOST}:8080/new?x=1"
        assert backend_requests(backend) == 0  # the mesh answered the redirect itself
        answer = client.get(f"http://{HOST}:8080/api/items?q=2")
        assert answer.status_code == 200
        body = answer.json()
        assert body["path"] == "/v2/items"  # prefix rewritten, query kept by the backend
        assert body["host"] == "internal.shop"  # authority rewritten
        assert answer.headers["x-served-by"] == "mesh"
        assert "x-version" not in answer.headers
        assert answer.request.url == httpx.URL(f"http://{HOST}:8080/api/items?q=2")


def backend_requests(backend: Any) -> int:
    stats = httpx.get(f"http://127.0.0.1:{backend.ready['port']}/__stats").json()
    return int(stats["requests"])
