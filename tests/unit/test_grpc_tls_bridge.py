"""Which library-mode gRPC endpoints go through the TLS bridge, and which
SPIFFE IDs each must present (`TlsIndex`: per cluster, failing closed), and
the bridge's own lifecycle. The bridged calls themselves are in
tests/integration/test_grpc_defaults.py and tests/interop/test_grpc_modes.py."""

from __future__ import annotations

import gc
from pathlib import Path

from proxyless_mesh.integrations._grpc_tls_bridge import (
    TlsBridge,
    TlsIndex,
    grpc_origination_credentials,
)
from proxyless_mesh.model import (
    Cluster,
    ClusterLoadAssignment,
    Endpoint,
    Locality,
    LocalityEndpoints,
    OriginationTls,
    UpstreamTls,
)
from proxyless_mesh.runtime import BalancerSource as _BalancerSource
from proxyless_mesh.runtime import MeshSnapshot

GREETER = "spiffe://cluster.local/ns/default/sa/greeter"
OTHER = "spiffe://cluster.local/ns/default/sa/other"


def source(name: str, tls: UpstreamTls | None, *endpoints: Endpoint) -> _BalancerSource:
    assignment = ClusterLoadAssignment(name, (LocalityEndpoints(Locality(), endpoints),))
    return _BalancerSource(Cluster(name, name, tls=tls), assignment)


def test_each_cluster_gets_its_own_ids_for_one_address() -> None:
    mine, theirs, plain = (
        Endpoint("10.0.0.1", 80),
        Endpoint("10.0.0.1", 80),
        Endpoint("10.0.0.2", 80),
    )
    index = TlsIndex(
        MeshSnapshot(
            sources={
                "a": source("a", UpstreamTls((GREETER,)), mine),
                "b": source("b", UpstreamTls((OTHER,)), theirs),
                "c": source("c", None, plain),
            }
        )
    )
    assert index.expected(mine) == {GREETER}
    assert index.expected(theirs) == {OTHER}
    assert index.expected(plain) is None
    # An endpoint object of another snapshot: by address; the two clusters
    # disagree, so no identity is accepted.
    stranger = index.expected(Endpoint("10.0.0.1", 80))
    assert stranger is not None and GREETER not in stranger and OTHER not in stranger
    assert index.expected(Endpoint("10.0.0.2", 80)) is None


def test_by_address_keeps_what_every_cluster_agrees_on() -> None:
    index = TlsIndex(
        MeshSnapshot(
            sources={
                "a": source("a", UpstreamTls((GREETER, OTHER)), Endpoint("10.0.0.1", 80)),
                "b": source("b", UpstreamTls((GREETER,)), Endpoint("10.0.0.1", 80)),
                "any": source("any", UpstreamTls(()), Endpoint("10.0.0.3", 80)),
            }
        )
    )
    assert index.expected(Endpoint("10.0.0.1", 80)) == {GREETER}
    assert index.expected(Endpoint("10.0.0.3", 80)) == frozenset()  # any mesh identity


def test_origination_is_indexed_by_its_rule_and_never_mixed_with_mtls() -> None:
    simple = UpstreamTls(sni="api.test", origination=OriginationTls())
    api, shared, shared_mtls = (
        Endpoint("10.0.0.5", 443),
        Endpoint("10.0.0.6", 443),
        Endpoint("10.0.0.6", 443),
    )
    index = TlsIndex(
        MeshSnapshot(
            sources={
                "api": source("api", simple, api, shared),
                "mesh": source("mesh", UpstreamTls((GREETER,)), shared_mtls),
            }
        )
    )
    assert index.expected(api) == simple
    assert index.expected(Endpoint("10.0.0.5", 443)) == simple  # by address: one rule
    # One address both originated to and mesh mTLS: by address, neither (fail closed).
    mixed = index.expected(Endpoint("10.0.0.6", 443))
    assert isinstance(mixed, frozenset) and GREETER not in mixed


def test_grpcio_originates_only_where_its_name_check_is_the_rules(tmp_path: Path) -> None:
    """grpcio checks the server against the SNI alone: a rule naming other
    subjectAltNames, or with files that cannot be read, goes to the bridge."""
    (tmp_path / "ca.pem").write_text("not read here")
    ca = str(tmp_path / "ca.pem")
    assert grpc_origination_credentials(UpstreamTls(sni="a.test", origination=OriginationTls(ca)))
    same = OriginationTls(ca, subject_alt_names=("a.test",))
    assert grpc_origination_credentials(UpstreamTls(sni="a.test", origination=same))
    other = OriginationTls(ca, subject_alt_names=("b.test",))
    assert grpc_origination_credentials(UpstreamTls(sni="a.test", origination=other)) is None
    missing = OriginationTls(str(tmp_path / "absent.pem"))
    assert grpc_origination_credentials(UpstreamTls(sni="a.test", origination=missing)) is None


def test_the_bridge_stops_and_removes_its_sockets_on_close_or_when_dropped() -> None:
    for drop in (False, True):
        bridge = TlsBridge(credentials=None)  # type: ignore[arg-type]  # no connection is made
        target = bridge.listen("127.0.0.1", 1, frozenset())
        socket_path = Path(target.removeprefix("unix:"))
        thread = bridge._thread
        assert socket_path.exists() and thread.is_alive()
        if drop:
            del bridge
            gc.collect()
        else:
            bridge.close()
        assert not thread.is_alive()
        assert not socket_path.parent.exists()
