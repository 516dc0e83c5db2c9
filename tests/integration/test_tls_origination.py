"""Egress TLS origination from the library, end to end on 127.0.0.1.

HTTPS servers outside the mesh with their own CA (one also demanding a
client certificate); ServiceEntries declare them (MESH_EXTERNAL, an HTTP port
the application calls with http://), DestinationRules originate TLS (SIMPLE
with caCertificates; MUTUAL with a client certificate; a wrong
subjectAltNames). A Mesh client with no mesh identity at all calls them
through `mesh.httpx_transport()`; REGISTRY_ONLY refuses a host nobody declared.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import API, external_servers
from meshlab import LocalMesh

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.errors import OutsideMeshError, PeerIdentityError
from proxyless_mesh.runtime import REGISTRY_ONLY


@dataclass
class Egress:
    lab: LocalMesh

    def mesh(self, **options: Any) -> Mesh:
        return Mesh(
            Bootstrap.from_file(self.lab.bootstrap("client-1", "shop", "client")), **options
        )


@pytest.fixture
def egress(lab: LocalMesh, tmp_path: Path) -> Iterator[Egress]:
    with external_servers(lab, tmp_path):
        lab.start_control_plane()
        yield Egress(lab)


def test_the_library_originates_tls_with_the_rules_ca_sni_and_names(egress: Egress) -> None:
    with egress.mesh() as mesh, httpx.Client(transport=mesh.httpx_transport(), timeout=15) as c:
        assert not mesh.mtls  # no mesh identity: origination does not need one
        served = c.get(f"http://{API}/v1/items")
        assert served.status_code == 200, served.text
        assert served.json() == {"sni": API, "client": None, "path": "/v1/items"}
        # MUTUAL: the server demanded a certificate and got the rule's.
        both = c.get("http://mtls.external.test/x")
        assert both.json() == {"sni": "mtls.external.test", "client": "client.shop", "path": "/x"}
        # The certificate is valid for api.external.test, not the rule's x.test.
        with pytest.raises(PeerIdentityError, match=r"x\.test"):
            c.get("http://wrong.external.test/")


def test_registry_only_refuses_an_undeclared_host(egress: Egress) -> None:
    with (
        egress.mesh(outbound_policy=REGISTRY_ONLY) as mesh,
        httpx.Client(transport=mesh.httpx_transport(), timeout=15) as client,
    ):
        assert client.get(f"http://{API}/").status_code == 200
        with pytest.raises(OutsideMeshError):
            client.get("http://unknown.external.test/")
