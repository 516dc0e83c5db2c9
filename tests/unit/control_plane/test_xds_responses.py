"""Shared DiscoveryResponses: built once per (kind, type, subscription, version)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from mesh_control_plane.translate import CLUSTER, ClientKind, NodeInfo
from mesh_control_plane.xds import PackedResource, Subscription
from mesh_control_plane.xds.responses import ResponseCache

NODE = NodeInfo(id="n1", kind=ClientKind.MESH)
KEY: Hashable = NODE.cache_key


def packed(name: str, connect_ms: int = 100) -> PackedResource:
    msg = cluster_pb2.Cluster(name=name)
    msg.connect_timeout.FromMilliseconds(connect_ms)
    data = msg.SerializeToString(deterministic=True)
    any_msg = any_pb2.Any(
        type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster", value=data
    )
    return PackedResource(CLUSTER, name, f"{name}-{connect_ms}", any_msg, msg)


class Source:
    """What the snapshot cache would hand out; counts how often it is asked."""

    def __init__(self, *resources: PackedResource) -> None:
        self.resources = {r.name: r for r in resources}
        self.calls = 0

    def __call__(self, node: NodeInfo, type_url: str) -> Mapping[str, PackedResource]:
        self.calls += 1
        return self.resources if type_url == CLUSTER else {}


def parse(payload: bytes) -> discovery_pb2.DiscoveryResponse:
    return discovery_pb2.DiscoveryResponse.FromString(payload)


def names(payload: bytes) -> list[str]:
    return [cluster_pb2.Cluster.FromString(a.value).name for a in parse(payload).resources]


def test_identical_subscriptions_share_one_serialized_response() -> None:
    source = Source(packed("b"), packed("a"), packed("c"))
    cache = ResponseCache(source)
    cache.reset("7")
    first = cache.get(NODE, KEY, CLUSTER, Subscription(False, frozenset({"b", "a", "x"})))
    again = cache.get(NODE, KEY, CLUSTER, Subscription(False, frozenset({"x", "a", "b"})))
    assert again is first  # the same bytes object goes to every such stream
    assert source.calls == 1
    wire = parse(first.payload)
    assert (wire.version_info, wire.type_url, wire.nonce) == ("7", CLUSTER, first.nonce)
    assert names(first.payload) == ["a", "b"]  # sorted, unknown names skipped
    assert first.fingerprint == (("a", "a-100"), ("b", "b-100"))


def test_other_subscriptions_and_kinds_get_their_own_nonce() -> None:
    cache = ResponseCache(Source(packed("a"), packed("b")))
    cache.reset("1")
    only_a = cache.get(NODE, KEY, CLUSTER, Subscription(False, frozenset({"a"})))
    wildcard = cache.get(NODE, KEY, CLUSTER, Subscription(True, frozenset()))
    other_kind = cache.get(NODE, ("other",), CLUSTER, Subscription(False, frozenset({"a"})))
    assert names(wildcard.payload) == ["a", "b"]
    assert len({only_a.nonce, wildcard.nonce, other_kind.nonce}) == 3


def test_a_new_version_rebuilds_and_the_fingerprint_tells_what_changed() -> None:
    source = Source(packed("a"), packed("b"))
    cache = ResponseCache(source)
    sub = Subscription(False, frozenset({"a"}))
    cache.reset("1")
    old = cache.get(NODE, KEY, CLUSTER, sub)
    cache.reset("2")
    same_content = cache.get(NODE, KEY, CLUSTER, sub)
    assert same_content is not old and parse(same_content.payload).version_info == "2"
    assert same_content.fingerprint == old.fingerprint  # nothing to push for "a"
    source.resources["a"] = packed("a", connect_ms=250)
    cache.reset("3")
    changed = cache.get(NODE, KEY, CLUSTER, sub)
    assert changed.fingerprint != old.fingerprint


def test_fresh_copy_has_the_same_content_under_a_new_nonce() -> None:
    cache = ResponseCache(Source(packed("a")))
    cache.reset("4")
    original = cache.get(NODE, KEY, CLUSTER, Subscription(False, frozenset({"a"})))
    copy = cache.fresh_copy(original)
    assert copy.nonce != original.nonce
    assert copy.fingerprint == original.fingerprint and copy.version == "4"
    a, b = parse(original.payload), parse(copy.payload)
    b.nonce = a.nonce
    assert a == b
