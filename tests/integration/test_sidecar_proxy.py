"""`meshctl proxy run`: a workload the library does not touch joins the mesh
through an Envoy sidecar, end to end on 127.0.0.1.

The "legacy" workload is a plain http.server (a stand-in for any language)
behind the sidecar (identity shop/legacy), STRICT mTLS, an
AuthorizationPolicy admitting only the frontend. Meshed Python clients call
it; the stand-in calls the STRICT Python `reviews` service through the
sidecar's outbound listener in plain HTTP.
"""

from __future__ import annotations

import contextlib
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from gateway_support import (
    admin_get,
    listener_ports,
    running_proxy,
    serving,
    wait_for_listener,
)
from identities import (
    FRONTEND,
    NAMESPACE,
    REVIEWS_HOST,
    listening_socket,
    service_entry,
    serving_asgi,
    workload_mesh,
)
from meshlab import LocalMesh
from processes import reserved_port

from proxyless_mesh.integrations._asgi import tls_peer_principal

pytestmark = pytest.mark.interop

LEGACY_HOST = f"legacy.{NAMESPACE}.svc.cluster.local"
LEGACY = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/legacy"


class _Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "xfcc": self.headers.get("x-forwarded-client-cert")})
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


def plain_app() -> contextlib.AbstractContextManager[int]:
    """The stand-in: a plain http.server echoing path and XFCC; its port."""
    return serving(ThreadingHTTPServer(("127.0.0.1", 0), _Echo))


def _config(legacy_port: int, reviews_port: int) -> str:
    legacy = service_entry(LEGACY_HOST, legacy_port)
    legacy["metadata"]["name"] = "legacy"
    legacy["spec"]["endpoints"][0]["serviceAccount"] = "legacy"
    docs: list[dict[str, Any]] = [
        legacy,
        service_entry(REVIEWS_HOST, reviews_port),
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": NAMESPACE},
            "spec": {"mtls": {"mode": "STRICT"}},
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "legacy-from-frontend", "namespace": NAMESPACE},
            "spec": {
                "selector": {"matchLabels": {"app": "legacy"}},
                "action": "ALLOW",
                "rules": [{"from": [{"source": {"principals": [FRONTEND[len("spiffe://") :]]}}]}],
            },
        },
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


async def _whoami(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = (tls_peer_principal(scope) or "plaintext").encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_a_plain_http_workload_behind_the_sidecar_is_a_strict_mesh_member(
    lab: LocalMesh,
) -> None:
    reviews_sock = listening_socket()
    with reserved_port() as legacy_port, plain_app() as app_port:
        lab.write_config("mesh.yaml", _config(legacy_port, reviews_sock.getsockname()[1]))
        lab.start_control_plane(extra_args=["--leaf-ttl", "1h"])
        reviews = workload_mesh(lab, "reviews-1", "reviews")
        frontend = workload_mesh(lab, "frontend-1", "frontend")
        ratings = workload_mesh(lab, "ratings-1", "ratings")
        with (
            reviews,
            frontend,
            ratings,
            serving_asgi(_whoami, reviews, reviews_sock),
            running_proxy(
                lab, "legacy", NAMESPACE, {legacy_port: app_port}, ("app=legacy",)
            ) as admin,
            httpx.Client(transport=frontend.httpx_transport(), timeout=15) as client,
            httpx.Client(transport=ratings.httpx_transport(), timeout=15) as other,
        ):
            wait_for_listener(admin, f"inbound|{legacy_port}")
            # Inbound: the meshed frontend reaches the stand-in over mTLS; its
            # transport accepted only the sidecar's SPIFFE ID (legacy) and the
            # stand-in was told the caller's, which Envoy verified.
            deadline = time.monotonic() + 20
            while (response := client.get(f"http://{LEGACY_HOST}/hello")).status_code != 200:
                assert time.monotonic() < deadline, (response.status_code, response.text)
                time.sleep(0.1)
            echoed = response.json()
            assert echoed["path"] == "/hello" and f"URI={FRONTEND}" in echoed["xfcc"]
            cluster = next(c for c in frontend.xds.state.clusters.values() if LEGACY_HOST in c.name)
            assert cluster.tls is not None and cluster.tls.expected_spiffe_ids == (LEGACY,)
            # The sidecar's RBAC refuses an identity the policy does not name.
            refused = other.get(f"http://{LEGACY_HOST}/hello")
            assert refused.status_code == 403, refused.text
            # STRICT: plaintext straight to the sidecar's port gets nothing.
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{legacy_port}/hello", timeout=5)
            # Outbound: the stand-in speaks plain HTTP to its sidecar, which
            # calls the STRICT reviews service in mTLS as shop/legacy.
            outbound = listener_ports(admin)["virtualOutbound"]
            called = httpx.get(
                f"http://127.0.0.1:{outbound}/", headers={"host": f"{REVIEWS_HOST}:80"}, timeout=10
            )
            assert called.status_code == 200 and called.text == LEGACY, called.text
            # The sidecar's Envoy took everything it was sent (ACK, never NACK).
            status = json.loads(admin_get(lab.admin_address, "/status"))
            (sidecar,) = [c for c in status["clients"] if c["node_id"].startswith("sidecar~")]
            for name, record in sidecar["types"].items():
                assert record["acked"] and not record["nacked"], (name, record)
    reviews_sock.close()
