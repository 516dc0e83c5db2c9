"""The ADS requests encoded without protobuf (issue 25: `_codec.WireCodec`,
`node_fields`) against the same requests built with protobuf's classes: on
generated names, versions, nonces, NACK errors and node metadata, protobuf
parses the hand-encoded bytes to a message equal to its own."""

from __future__ import annotations

from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import given
from hypothesis import strategies as st

from proxyless_mesh.bootstrap import Bootstrap, Locality, XdsServer
from proxyless_mesh.xds_client._codec import ProtobufCodec, WireCodec
from proxyless_mesh.xds_client._delta import DeltaAdsProtocol
from proxyless_mesh.xds_client._node import build_node, node_fields
from proxyless_mesh.xds_client._protocol import AdsProtocol

TEXT = st.one_of(st.sampled_from(["", "a", "outbound|80||svc.ns.svc.cluster.local"]), st.text())
LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
METADATA = st.dictionaries(
    st.text(max_size=5),
    st.recursive(
        LEAF,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=6,
    ),
    max_size=4,
)


@st.composite
def bootstraps(draw: st.DrawFn) -> Bootstrap:
    return Bootstrap(
        xds_servers=(XdsServer("127.0.0.1:1"),),
        node_id=draw(TEXT),
        node_cluster=draw(TEXT),
        locality=Locality(draw(TEXT), draw(TEXT), draw(TEXT)),
        node_metadata=draw(METADATA),
    )


@given(
    boot=bootstraps(),
    names=st.lists(TEXT, max_size=4, unique=True),
    error=st.one_of(st.none(), TEXT),
    delta=st.booleans(),
)
def test_requests_encoded_by_hand_parse_as_protobuf_builds_them(
    boot: Bootstrap, names: list[str], error: str | None, delta: bool
) -> None:
    protocol_class: Any = DeltaAdsProtocol if delta else AdsProtocol
    by_protobuf = protocol_class(build_node(boot, "ua"), codec=ProtobufCodec())
    by_hand = protocol_class(node_fields(boot, "ua"), codec=WireCodec())
    requests = []
    for protocol in (by_protobuf, by_hand):
        protocol.start_stream()
        sent = protocol.watch(names) or protocol.identify()
        if error is not None:  # a NACK carries google.rpc.Status
            sent.append(protocol._request({"type_url": "t", "response_nonce": "n1"}, error))
        requests.append(sent)
    cls = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
    assert len(requests[0]) == len(requests[1]) > 0
    for expected, encoded in zip(*requests, strict=True):
        assert cls.FromString(encoded.SerializeToString()) == expected
