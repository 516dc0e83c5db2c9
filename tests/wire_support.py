"""Messages built with protobuf's generated classes, read the way the xDS
client reads what it receives: as a `_wire.WireMessage` of the same bytes.
The library's inner decoders take only those (issue 25: no protobuf path);
its public decode_* functions convert such messages themselves."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from proxyless_mesh.xds_client._wire import WireMessage, parse


def as_wire(msg: Any) -> WireMessage:
    """`msg` (a generated protobuf message) as the client would decode it."""
    return parse(msg.DESCRIPTOR.full_name, msg.SerializeToString())


def read_requests(requests: Iterable[Any], *, delta: bool = False) -> list[Any]:
    """Discovery requests the protocol made (already wire-encoded), as
    protobuf reads them off the wire (Delta ones with `delta`)."""
    from envoy.service.discovery.v3 import discovery_pb2

    cls = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
    return [cls.FromString(r.SerializeToString()) for r in requests]
