"""DestinationRule SIMPLE/MUTUAL: what the loader accepts, the xDS the control
plane sends, and what the library reads back from it (the same bytes Envoy
gets, tests/interop/test_envoy_egress.py)."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from mesh_control_plane.config import ConfigLoadError, parse_documents
from mesh_control_plane.config.model import ClientTls
from mesh_control_plane.translate.tls import origination_socket
from wire_support import as_wire

from proxyless_mesh.errors import PeerIdentityError
from proxyless_mesh.integrations._origination import verify_names
from proxyless_mesh.model import OriginationTls, UpstreamTls
from proxyless_mesh.xds_client._decode_security import decode_upstream_tls


def _decoded(tls: ClientTls, sni: str) -> UpstreamTls | None:
    cluster = cluster_pb2.Cluster(name="c", transport_socket=origination_socket(tls, sni))
    return decode_upstream_tls(as_wire(cluster))


def test_simple_and_mutual_reach_the_library_as_written() -> None:
    simple = ClientTls("SIMPLE", ca_certificates="/ca.pem")
    assert _decoded(simple, "api.test") == UpstreamTls(
        sni="api.test", origination=OriginationTls("/ca.pem", subject_alt_names=("api.test",))
    )
    mutual = ClientTls(
        "MUTUAL",
        client_certificate="/c.pem",
        private_key="/k.pem",
        subject_alt_names=("a.test", "spiffe://x/ns/a/sa/b"),
    )
    assert _decoded(mutual, "api.test") == UpstreamTls(
        sni="api.test",
        origination=OriginationTls("", "/c.pem", "/k.pem", ("a.test", "spiffe://x/ns/a/sa/b")),
    )


def test_files_belong_to_origination_modes_only() -> None:
    doc = """
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: d}
    spec:
      host: a.test
      trafficPolicy: {tls: {mode: ISTIO_MUTUAL, caCertificates: /ca.pem, subjectAltNames: [x]}}
    """
    with pytest.raises(ConfigLoadError) as caught:
        parse_documents([("d.yaml", yaml.safe_load(textwrap.dedent(doc)))])
    assert [p.field for p in caught.value.problems] == [
        "spec.trafficPolicy.tls.caCertificates",
        "spec.trafficPolicy.tls.subjectAltNames",
    ]


class _Peer:
    def __init__(self, *sans: tuple[str, str]) -> None:
        self.sans = sans

    def getpeercert(self) -> dict[str, object]:
        return {"subjectAltName": self.sans}


def test_names_are_checked_with_one_label_wildcards() -> None:
    verify_names(_Peer(("DNS", "*.example.com")), frozenset({"api.example.com"}), "p")
    verify_names(_Peer(("URI", "spiffe://x/y")), frozenset({"spiffe://x/y"}), "p")
    for names in ({"a.b.example.com"}, {"example.com"}, {"other.test"}):
        with pytest.raises(PeerIdentityError, match="expected"):
            verify_names(_Peer(("DNS", "*.example.com")), frozenset(names), "p")
