"""Delta (incremental) ADS over a real gRPC stream on 127.0.0.1, beside SotW.

"Nothing was sent" is proven with a barrier, as in test_xds_server: the
client then subscribes to something that must be answered, and the next
response it reads must be that answer (a stream's requests are handled in
order and pushes are queued synchronously).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2
from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.translate import CLUSTER, ENDPOINT, LISTENER
from mesh_control_plane.xds import SnapshotCache

from .test_xds_server import A_CLUSTER, B_CLUSTER, A, AdsClient, B, service

pytestmark = pytest.mark.usefixtures("xds_engine")  # grpc.aio and the native engine

TIMEOUT = 5.0
C = service("c.mesh", 80, "10.0.0.3")
C_CLUSTER = "outbound|80||c.mesh"


class DeltaClient(AdsClient):
    """One scripted Delta ADS stream; responses are read into a queue."""

    def open(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> Any:
        return stub.DeltaAggregatedResources()

    async def send(
        self,
        type_url: str,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        *,
        ack: discovery_pb2.DeltaDiscoveryResponse | None = None,
        initial: Mapping[str, str] | None = None,
        error: str | None = None,
    ) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            initial_resource_versions=dict(initial or {}),
        )
        if self._first:
            request.node.CopyFrom(self.node)
            self._first = False
        if ack is not None:
            request.response_nonce = ack.nonce
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(request)


def versions(response: discovery_pb2.DeltaDiscoveryResponse) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}


@pytest.fixture
async def cache() -> SnapshotCache:
    cache = SnapshotCache()
    cache.set_config(MeshConfig(service_entries=(A, B)))
    return cache


async def test_wildcard_subscription_gets_every_cluster_with_versions(stub, clients) -> None:
    client = DeltaClient(stub, "d1")
    clients.append(client)
    await client.send(CLUSTER)  # legacy wildcard: no names on the first request
    response = await client.recv()
    assert response.type_url == CLUSTER
    assert response.system_version_info == "1"
    assert sorted(versions(response)) == [A_CLUSTER, B_CLUSTER]
    assert all(len(v) == 16 for v in versions(response).values())
    assert list(response.removed_resources) == []


async def test_unknown_name_is_answered_as_removed(stub, clients) -> None:
    client = DeltaClient(stub, "d1")
    clients.append(client)
    await client.send(LISTENER, ["a.mesh:80", "nope.mesh:80"])
    response = await client.recv()
    assert list(versions(response)) == ["a.mesh:80"]
    assert list(response.removed_resources) == ["nope.mesh:80"]
    # a later subscription is answered with just what it adds
    await client.send(LISTENER, ["b.mesh:80"], ack=response)
    second = await client.recv()
    assert (list(versions(second)), list(second.removed_resources)) == (["b.mesh:80"], [])


async def test_change_pushes_only_changed_resources_and_removals(stub, clients, cache) -> None:
    watcher, bystander = DeltaClient(stub, "w"), DeltaClient(stub, "b")
    clients += [watcher, bystander]
    await watcher.send(CLUSTER)
    first = await watcher.recv()
    await watcher.send(CLUSTER, ack=first)
    await bystander.send(ENDPOINT, [B_CLUSTER])
    await bystander.send(ENDPOINT, ack=await bystander.recv())

    # a.mesh's endpoints change (not its cluster), c.mesh appears, b.mesh goes
    moved = service("a.mesh", 80, "10.0.0.9")
    cache.set_config(MeshConfig(service_entries=(moved, C)))

    added = await watcher.recv()
    assert (sorted(versions(added)), list(added.removed_resources)) == ([C_CLUSTER], [])
    removal = await watcher.recv()  # clusters are removed last (make-before-break)
    assert (list(versions(removal)), list(removal.removed_resources)) == ([], [B_CLUSTER])
    assert removal.system_version_info == "2"
    # the bystander's only resource (b's endpoints) is gone: told so, nothing else
    gone = await bystander.recv()
    assert (gone.type_url, list(gone.removed_resources)) == (ENDPOINT, [B_CLUSTER])
    await bystander.send(LISTENER, ["a.mesh:80"])  # barrier
    assert (await bystander.recv()).type_url == LISTENER


async def test_resume_with_initial_versions_gets_only_what_changed(stub, clients, cache) -> None:
    first = DeltaClient(stub, "r1")
    clients.append(first)
    await first.send(CLUSTER)
    held = versions(await first.recv())
    await first.close()

    cache.set_config(MeshConfig(service_entries=(service("a.mesh", 81, "10.0.0.1"), B)))

    resumed = DeltaClient(stub, "r1")
    clients.append(resumed)
    await resumed.send(CLUSTER, initial=held)
    response = await resumed.recv()
    # a.mesh:80's cluster is gone, a.mesh:81's is new; b's is unchanged: not re-sent
    assert sorted(versions(response)) == ["outbound|81||a.mesh"]
    assert list(response.removed_resources) == [A_CLUSTER]


async def test_resume_with_nothing_changed_gets_no_answer(stub, clients, cache) -> None:
    first = DeltaClient(stub, "r1")
    clients.append(first)
    await first.send(CLUSTER)
    full = await first.recv()
    resumed = DeltaClient(stub, "r2")
    clients.append(resumed)
    await resumed.send(CLUSTER, initial=versions(full))
    await resumed.send(LISTENER, ["a.mesh:80"])  # barrier: nothing came for CDS before
    assert (await resumed.recv()).type_url == LISTENER
    # ...and the resumed subscription is followed like any other
    cache.set_config(MeshConfig(service_entries=(A, B, C)))
    assert sorted(versions(await resumed.recv())) == [C_CLUSTER]


async def test_ack_nack_and_status_per_delta_stream(stub, clients, server) -> None:
    client = DeltaClient(stub, "d1")
    clients.append(client)
    await client.send(LISTENER, ["a.mesh:80"])
    response = await client.recv()
    await client.send(LISTENER, ack=response, error="bad listener")
    await client.send(CLUSTER, [A_CLUSTER])  # barrier: the NACK caused no resend
    cds = await client.recv()
    assert cds.type_url == CLUSTER
    await client.send(CLUSTER, ack=cds)
    await client.send(LISTENER, ["b.mesh:80"])  # barrier: the ACK is applied
    await client.recv()

    [record] = server.servicer.clients()
    status = record.to_status()
    assert status["protocol"] == "delta"
    assert status["types"]["LDS"] == {
        "subscribed": ["a.mesh:80", "b.mesh:80"],
        "sent": "1",
        "acked": "",
        "nacked": "1",
        "error": "bad listener",
    }
    assert (status["types"]["CDS"]["acked"], status["types"]["CDS"]["nacked"]) == ("1", None)


async def test_streams_of_one_kind_share_one_serialized_push(stub, clients, cache) -> None:
    one, two = DeltaClient(stub, "s1"), DeltaClient(stub, "s2")
    clients += [one, two]
    for client in (one, two):
        await client.send(CLUSTER)
        await client.send(CLUSTER, ack=await client.recv())
    cache.set_config(MeshConfig(service_entries=(A, B, C)))
    pushed = [await one.recv(), await two.recv()]
    assert pushed[0].nonce == pushed[1].nonce  # the same bytes, built once
    assert [sorted(versions(p)) for p in pushed] == [[C_CLUSTER], [C_CLUSTER]]


async def test_clients_subscribing_alike_share_one_answer(stub, clients) -> None:
    """A connect storm: the answer to one subscription is made once; one that
    names a resource that does not exist gets its own, with the removal."""
    one, two, odd = DeltaClient(stub, "s1"), DeltaClient(stub, "s2"), DeltaClient(stub, "s3")
    clients += [one, two, odd]
    answers = []
    for client in (one, two):
        await client.send(LISTENER, ["a.mesh:80", "b.mesh:80"])
        answers.append(await client.recv())
    await odd.send(LISTENER, ["a.mesh:80", "b.mesh:80", "nope.mesh:80"])
    third = await odd.recv()
    assert answers[0].nonce == answers[1].nonce != third.nonce
    assert [sorted(versions(a)) for a in answers] == [["a.mesh:80", "b.mesh:80"]] * 2
    assert (sorted(versions(third)), list(third.removed_resources)) == (
        ["a.mesh:80", "b.mesh:80"],
        ["nope.mesh:80"],
    )


async def test_unsubscribe_then_push_sends_nothing_for_it(stub, clients, cache) -> None:
    client = DeltaClient(stub, "u1")
    clients.append(client)
    await client.send(ENDPOINT, [A_CLUSTER, B_CLUSTER])
    response = await client.recv()
    await client.send(ENDPOINT, unsubscribe=[A_CLUSTER], ack=response)
    await client.send(LISTENER, ["a.mesh:80"])  # barrier: the unsubscription is read
    assert (await client.recv()).type_url == LISTENER
    cache.set_config(MeshConfig(service_entries=(service("a.mesh", 80, "10.0.0.9"), B)))
    await client.send(LISTENER, ["b.mesh:80"])  # barrier: no EDS push came before
    assert (await client.recv()).type_url == LISTENER


async def test_changes_outside_a_named_subscription_are_never_pushed(stub, clients, cache) -> None:
    """Scoping by subscription: a client following only a.mesh gets nothing
    when other services appear, change or go, and only a.mesh's change."""
    client = DeltaClient(stub, "scoped")
    clients.append(client)
    for type_url, name in ((LISTENER, "a.mesh:80"), (CLUSTER, A_CLUSTER), (ENDPOINT, A_CLUSTER)):
        await client.send(type_url, [name])
        await client.send(type_url, ack=await client.recv())
    for config in (
        MeshConfig(service_entries=(A, service("b.mesh", 80, "10.0.0.7"))),  # b moves
        MeshConfig(service_entries=(A, B, C)),  # c appears
        MeshConfig(service_entries=(A,)),  # b and c go
    ):
        cache.set_config(config)
    cache.set_config(MeshConfig(service_entries=(service("a.mesh", 80, "10.0.0.8"),)))
    pushed = await client.recv()  # the first thing it gets is a.mesh's own change
    assert (pushed.type_url, sorted(versions(pushed))) == (ENDPOINT, [A_CLUSTER])
    assert list(pushed.removed_resources) == []
