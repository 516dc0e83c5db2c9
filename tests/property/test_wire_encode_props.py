"""The ADS requests encoded without protobuf (issue 25: `_codec.request`,
`node_fields`) against the same requests built with protobuf's classes from
the same fields (the node by `build_node`, written with protobuf's own Node
and Struct): on generated names, versions, nonces, NACK errors and node
metadata, protobuf parses the hand-encoded bytes to a message equal to its
own."""

from __future__ import annotations

from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from hypothesis import given
from hypothesis import strategies as st

from proxyless_mesh.bootstrap import Bootstrap, Locality, XdsServer
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
    protocol: Any = (DeltaAdsProtocol if delta else AdsProtocol)(node_fields(boot, "ua"))
    protocol.start_stream()
    sent = protocol.watch(names) or protocol.identify()
    if error is not None:  # a NACK carries google.rpc.Status
        sent.append(protocol._request({"type_url": "t", "response_nonce": "n1"}, error))
    cls = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
    assert sent
    assert "node" in sent[0].fields  # the first request of a stream identifies the client
    for encoded in sent:
        assert cls.FromString(encoded.SerializeToString()) == cls(**_protobuf(encoded.fields, boot))


def _protobuf(fields: Any, boot: Bootstrap) -> dict[str, Any]:
    """The request's fields as protobuf's constructor takes them."""
    values = dict(fields)
    if "node" in values:
        values["node"] = build_node(boot, "ua")
    if "error_detail" in values:
        values["error_detail"] = status_pb2.Status(**values["error_detail"])
    return values
