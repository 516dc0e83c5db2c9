"""The Lease holder's merge of every replica's gateway verdicts (kube/gateway_verdicts.py):
a peer's verdicts count until its Lease's renewTime stops changing for its
leaseDurationSeconds on this replica's clock; the worst verdict of all wins."""

from __future__ import annotations

from typing import Any

from mesh_control_plane.config.gateway_api_status import Programmed
from mesh_control_plane.kube.gateway_verdicts import (
    ANNOTATION,
    PeerVerdicts,
    decode,
    encode,
    lease_name,
)

OK = Programmed("True", "Programmed", "its Envoy ACKed the current listeners and routes")
PENDING = Programmed("False", "Pending", "its Envoy has not ACKed Listener 3 yet")
INVALID = Programmed("False", "Invalid", "its Envoy rejected Listener 3: bad")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lease(name: str, renewed: str, verdicts: dict[str, Programmed], duration: int = 4) -> Any:
    return {
        "metadata": {
            "name": name,
            "resourceVersion": "7",
            "annotations": {ANNOTATION: encode(verdicts)},
        },
        "spec": {"renewTime": renewed, "leaseDurationSeconds": duration},
    }


def test_encode_decode_round_trip_and_garbage_is_no_verdicts() -> None:
    verdicts = {"shop/web": OK, "shop/api": INVALID}
    assert decode(encode(verdicts)) == verdicts
    assert decode("not json") == {}
    assert decode('{"shop/web": 3}') == {}


def test_a_peers_verdict_counts_and_the_worst_wins() -> None:
    peers = PeerVerdicts("gateway-verdicts-me", Clock())
    leases = [
        lease("gateway-verdicts-b", "t1", {"shop/web": PENDING, "shop/api": OK}),
        lease("gateway-verdicts-c", "t1", {"shop/api": INVALID}),
    ]
    merged = peers.merge({"shop/web": OK, "shop/own": OK}, leases)
    assert merged == {"shop/web": PENDING, "shop/api": INVALID, "shop/own": OK}
    # Its own Lease (a previous publication) is not read back over its live verdicts.
    mine = lease("gateway-verdicts-me", "t1", {"shop/own": INVALID})
    assert peers.merge({"shop/own": OK}, [mine]) == {"shop/own": OK}


def test_a_peer_that_stops_renewing_expires_on_this_replicas_clock() -> None:
    clock = Clock()
    peers = PeerVerdicts("gateway-verdicts-me", clock)
    assert peers.merge({}, [lease("gateway-verdicts-b", "t1", {"shop/web": OK})]) == {
        "shop/web": OK
    }
    clock.now += 3.9  # renewTime unchanged, within its 4 s
    assert peers.merge({}, [lease("gateway-verdicts-b", "t1", {"shop/web": OK})]) == {
        "shop/web": OK
    }
    clock.now += 0.2  # 4.1 s without a renewal: gone, for the Lease holder to delete
    assert peers.merge({}, [lease("gateway-verdicts-b", "t1", {"shop/web": OK})]) == {}
    assert peers.expired == {"gateway-verdicts-b": "7"}
    # Renewed again: it counts again, its clock restarted.
    assert peers.merge({}, [lease("gateway-verdicts-b", "t2", {"shop/web": OK})]) == {
        "shop/web": OK
    }
    assert peers.expired == {}
    clock.now += 3.0
    assert peers.merge({}, [lease("gateway-verdicts-b", "t2", {"shop/web": OK})]) == {
        "shop/web": OK
    }


def test_lease_names_are_valid_object_names() -> None:
    assert lease_name("Host_A.local-12") == "gateway-verdicts-host-a-local-12"
    assert len(lease_name("x" * 100)) <= 63
