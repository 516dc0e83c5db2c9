"""Push scoping by the Sidecar resource, over real SotW and Delta ADS streams:
a client whose Sidecar hides a service is never pushed that service's
changes (nor told of it appearing), while a client without a Sidecar is.

"Nothing was sent" is proven with a barrier, as in test_xds_server: the
next response the scoped client reads must be the one for the change it
can see, made after the hidden ones.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import struct_pb2
from mesh_control_plane.config.model import MeshConfig, Meta, ServiceEntry
from mesh_control_plane.config.parse_sidecar import Sidecar
from mesh_control_plane.translate import CLUSTER, ENDPOINT
from mesh_control_plane.xds import SnapshotCache

from .test_xds_delta import DeltaClient, versions
from .test_xds_server import AdsClient, names_in, service

SIDECAR = Sidecar(Meta("Sidecar", "default", "web", "sidecar.yaml"), None, ((".", "*"),))


def _in(namespace: str, entry: ServiceEntry) -> ServiceEntry:
    meta = entry.meta
    return ServiceEntry(
        meta=Meta(meta.kind, meta.name, namespace, meta.file),
        hosts=entry.hosts,
        ports=entry.ports,
        endpoints=entry.endpoints,
    )


SEEN = _in("web", service("catalog.web.mesh", 80, "10.0.0.1"))
HIDDEN = _in("shop", service("orders.shop.mesh", 80, "10.0.0.2"))
SEEN_CLUSTER, HIDDEN_CLUSTER = "outbound|80||catalog.web.mesh", "outbound|80||orders.shop.mesh"
# What happens to the hidden namespace: its service moves, then another appears.
HIDDEN_CHANGES = (
    (SEEN, _in("shop", service("orders.shop.mesh", 80, "10.0.0.9"))),
    (SEEN, HIDDEN, _in("shop", service("billing.shop.mesh", 80, "10.0.0.3"))),
)
SEEN_CHANGE = (_in("web", service("catalog.web.mesh", 80, "10.0.0.7")), HIDDEN)


def _config(*entries: ServiceEntry) -> MeshConfig:
    return MeshConfig(service_entries=entries, sidecars=(SIDECAR,))


def _in_namespace(client: AdsClient, namespace: str) -> AdsClient:
    client.node.metadata.fields["NAMESPACE"].CopyFrom(struct_pb2.Value(string_value=namespace))
    return client


@pytest.fixture
async def cache() -> SnapshotCache:
    cache = SnapshotCache()
    cache.set_config(_config(SEEN, HIDDEN))
    return cache


def _delta_names(response: Any) -> list[str]:
    return sorted(versions(response))


# (stream client, the names a response carries, whether an ACK repeats the names)
VARIANTS = {"sotw": (AdsClient, names_in, True), "delta": (DeltaClient, _delta_names, False)}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
async def test_a_hidden_service_change_is_not_pushed(stub, clients, cache, variant) -> None:
    client_type, names, ack_repeats = VARIANTS[variant]
    scoped = _in_namespace(client_type(stub, f"web-{variant}"), "web")
    unscoped = _in_namespace(client_type(stub, f"other-{variant}"), "other")
    clients += [scoped, unscoped]
    first = {}
    endpoints = [SEEN_CLUSTER, HIDDEN_CLUSTER]
    for client in (scoped, unscoped):
        await client.send(CLUSTER)  # wildcard: every cluster it may see
        first[client] = await client.recv()
        await client.send(CLUSTER, ack=first[client])
        await client.send(ENDPOINT, endpoints)
        await client.send(ENDPOINT, endpoints if ack_repeats else [], ack=await client.recv())
    assert sorted(names(first[scoped])) == [SEEN_CLUSTER]
    assert sorted(names(first[unscoped])) == [SEEN_CLUSTER, HIDDEN_CLUSTER]  # no Sidecar
    for entries in HIDDEN_CHANGES:
        cache.set_config(_config(*entries))
    # The client without a Sidecar is told (the test could fail) ...
    told = await unscoped.recv()
    assert told.type_url in (CLUSTER, ENDPOINT)
    # ... the scoped one's first response is the change to the service it sees.
    cache.set_config(_config(*SEEN_CHANGE))
    pushed = await scoped.recv()
    assert (pushed.type_url, names(pushed)) == (ENDPOINT, [SEEN_CLUSTER])
    assert list(getattr(pushed, "removed_resources", [])) == []  # Delta: nothing removed
