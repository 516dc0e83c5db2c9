"""A Sidecar scopes what a meshed httpx client may reach, with a real control
plane and real backends: a host its Sidecar hides is, for that client, not a
mesh service (REGISTRY_ONLY refuses it, ALLOW_ANY passes it through to the
host itself), while a client without a Sidecar is routed by the mesh; an
edit of the Sidecar reaches the running client.

The hidden host is `localhost` on the port of backend "direct" (v2), and its
ServiceEntry sends it to backend "mesh" (v1): the x-version header says which
way a request went."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from meshlab import LocalMesh, service_entry, write_file_atomically

from proxyless_mesh import Mesh, OutsideMeshError
from proxyless_mesh.runtime import ALLOW_ANY, REGISTRY_ONLY

CATALOG = "catalog.web.mesh"


def _sidecar(hosts: list[str], mode: str | None = None) -> str:
    spec: dict[str, object] = {"egress": [{"hosts": hosts}]}
    if mode is not None:
        spec["outboundTrafficPolicy"] = {"mode": mode}
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": "web"},
        "spec": spec,
    }
    return json.dumps(doc)


def _version(client: httpx.Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.text
    return response.headers["x-version"]


@pytest.mark.parametrize("ads", ["sotw", "delta"])
def test_a_hidden_host_is_not_a_mesh_service_for_the_scoped_client(
    lab: LocalMesh, ads: str
) -> None:
    lab.ads = ads
    routed = lab.start_http_backend("mesh", "v1")
    direct = lab.start_http_backend("direct", "v2")
    port, direct_port = routed.ready["port"], direct.ready["port"]
    lab.write_config(
        "services.yaml",
        service_entry(CATALOG, 8080, [("127.0.0.1", port, {})], namespace="web")
        + "\n---\n"
        + service_entry("localhost", direct_port, [("127.0.0.1", port, {})], namespace="shop"),
    )
    lab.write_config("sidecar.yaml", _sidecar(["./*"]))
    lab.start_control_plane()
    hidden = f"http://localhost:{direct_port}/"
    with (
        Mesh.from_bootstrap(lab.bootstrap("web-any", "web"), outbound_policy=ALLOW_ANY) as web,
        Mesh.from_bootstrap(
            lab.bootstrap("web-only", "web"), outbound_policy=REGISTRY_ONLY
        ) as strict,
        Mesh.from_bootstrap(
            lab.bootstrap("other", "other"), outbound_policy=REGISTRY_ONLY
        ) as other,
        httpx.Client(transport=web.httpx_transport()) as web_client,
        httpx.Client(transport=strict.httpx_transport()) as strict_client,
        httpx.Client(transport=other.httpx_transport()) as other_client,
    ):
        # The service the Sidecar imports is routed by the mesh for both.
        assert _version(web_client, f"http://{CATALOG}:8080/") == "v1"
        assert _version(strict_client, f"http://{CATALOG}:8080/") == "v1"
        # Without a Sidecar, "other" sees shop's service: routed to v1.
        assert _version(other_client, hidden) == "v1"
        # Under web's Sidecar it is no mesh service: passed through, or refused.
        assert _version(web_client, hidden) == "v2"
        with pytest.raises(OutsideMeshError):
            strict_client.get(hidden)
        # Importing shop's hosts reaches the running clients: now routed.
        write_file_atomically(lab.config_dir / "sidecar.yaml", _sidecar(["./*", "shop/*"]))
        _await_version(web_client, hidden, "v1")
        _await_version(strict_client, hidden, "v1")  # each client gets its own push


@pytest.mark.parametrize("ads", ["sotw", "delta"])
def test_a_sidecars_outbound_policy_overrides_the_clients_own(lab: LocalMesh, ads: str) -> None:
    """Istio: the Sidecar's outboundTrafficPolicy overrides the mesh default,
    here the client's own `outbound_policy`, and follows edits of the file."""
    lab.ads = ads
    direct = lab.start_http_backend("direct", "v2")
    outside = f"http://localhost:{direct.ready['port']}/"  # declared by nobody
    lab.write_config("services.yaml", service_entry(CATALOG, 8080, [("127.0.0.1", 1, {})]))
    lab.write_config("sidecar.yaml", _sidecar(["./*"], REGISTRY_ONLY))
    lab.start_control_plane()
    with (
        Mesh.from_bootstrap(lab.bootstrap("any", "web"), outbound_policy=ALLOW_ANY) as loose,
        Mesh.from_bootstrap(lab.bootstrap("only", "web"), outbound_policy=REGISTRY_ONLY) as strict,
        Mesh.from_bootstrap(lab.bootstrap("other", "other"), outbound_policy=ALLOW_ANY) as other,
        httpx.Client(transport=loose.httpx_transport()) as loose_client,
        httpx.Client(transport=strict.httpx_transport()) as strict_client,
        httpx.Client(transport=other.httpx_transport()) as other_client,
    ):
        for client in (loose_client, strict_client):
            with pytest.raises(OutsideMeshError):  # the Sidecar's REGISTRY_ONLY wins
                client.get(outside)
        assert _version(other_client, outside) == "v2"  # no Sidecar: its own ALLOW_ANY
        write_file_atomically(lab.config_dir / "sidecar.yaml", _sidecar(["./*"], ALLOW_ANY))
        deadline = time.monotonic() + 15.0
        while strict.snapshot.outbound_policy != ALLOW_ANY:  # the edit arrives by push
            assert time.monotonic() < deadline, "the Sidecar's ALLOW_ANY never arrived"
            time.sleep(0.02)
        assert _version(strict_client, outside) == "v2"  # the Sidecar's ALLOW_ANY wins
        assert _version(loose_client, outside) == "v2"


def _await_version(client: httpx.Client, url: str, version: str, limit: float = 15.0) -> None:
    """The client follows the control plane: requests until one is answered by
    `version` (each is a real round trip), failing after `limit` seconds."""
    deadline = time.monotonic() + limit
    while True:
        try:
            if _version(client, url) == version:
                return
        except OutsideMeshError:
            pass  # the client's previous view: not a mesh service there yet
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} not answered by {version} within {limit}s")


def _route_to(namespace: str, version: str) -> str:
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": namespace},
        "spec": {
            "hosts": [REVIEWS],
            "exportTo": ["."],
            "http": [{"route": [{"destination": {"host": REVIEWS, "subset": version}}]}],
        },
    }
    return json.dumps(doc)


REVIEWS = "reviews.default.mesh"


def test_each_namespace_is_routed_by_the_virtual_service_exported_to_it(lab: LocalMesh) -> None:
    """Two VirtualServices for one host, each exported to its own namespace
    only (Istio's fix for IST0109): each namespace's clients follow their own."""
    v1, v2 = lab.start_http_backend("reviews", "v1"), lab.start_http_backend("reviews", "v2")
    lab.deploy_versions(REVIEWS, 8080, {"v1": v1, "v2": v2}, {"v1": 50, "v2": 50})
    (lab.config_dir / "route.yaml").unlink()
    lab.write_config("routes.yaml", _route_to("web", "v1") + "\n---\n" + _route_to("shop", "v2"))
    lab.start_control_plane()
    url = f"http://{REVIEWS}:8080/"
    with (
        Mesh.from_bootstrap(lab.bootstrap("web", "web")) as web,
        Mesh.from_bootstrap(lab.bootstrap("shop", "shop")) as shop,
        Mesh.from_bootstrap(lab.bootstrap("other", "other")) as other,
        httpx.Client(transport=web.httpx_transport()) as web_client,
        httpx.Client(transport=shop.httpx_transport()) as shop_client,
        httpx.Client(transport=other.httpx_transport()) as other_client,
    ):
        # 20 requests each. Without a VirtualService (namespace "other") they
        # spread over both instances: all 20 on one has probability 2 * 2^-20.
        assert {_version(other_client, url) for _ in range(20)} == {"v1", "v2"}
        assert {_version(web_client, url) for _ in range(20)} == {"v1"}
        assert {_version(shop_client, url) for _ in range(20)} == {"v2"}
