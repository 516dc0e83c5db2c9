"""The on-disk xDS config cache (issue 11): what a restarted process starts
from while the control plane is down. Driven through the real sans-I/O
AdsProtocol, so "what was accepted" is decided by the same code as in use."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.service.discovery.v3 import discovery_pb2
from test_xds_client import assignment, cluster, listener, packed, routes
from wire_support import read_requests

from proxyless_mesh.bootstrap import Bootstrap, XdsServer
from proxyless_mesh.xds_client import ResourceType, XdsState
from proxyless_mesh.xds_client._disk_cache import (
    CACHE_PATH_FIELD,
    ConfigCache,
    contains_key_material,
    default_cache_path,
)
from proxyless_mesh.xds_client._protocol import AdsProtocol

LDS, RDS, CDS, EDS = (t.type_url for t in ResourceType)


def response(type_url: str, version: str, *resources: Any) -> Any:
    return discovery_pb2.DiscoveryResponse(
        type_url=type_url,
        version_info=version,
        nonce=f"n-{type_url[-5:]}-{version}",
        resources=[packed(r) for r in resources],
    )


def feed(protocol: AdsProtocol, cache: ConfigCache, *responses: Any) -> XdsState:
    for r in responses:
        outcome = protocol.handle_response(r)
        cache.record(r, outcome.rejected)
        if outcome.changed:
            cache.save(protocol.state)
    cache.flush()
    return protocol.state


def good_config(port: int = 8080) -> list[Any]:
    return [
        response(LDS, "1", listener("p.mesh:80", "r1")),
        response(RDS, "1", routes("r1", {"c1": 80, "c2": 20})),
        response(CDS, "1", cluster("c1", "svc1"), cluster("c2")),
        response(EDS, "1", assignment("svc1", port), assignment("c2", 9090)),
    ]


def new_protocol() -> AdsProtocol:
    protocol = AdsProtocol({"id": "node-1"})
    protocol.start_stream()
    protocol.watch(["p.mesh:80"])
    return protocol


def make_cache(path: Path, **kw: Any) -> ConfigCache:
    kw.setdefault("node_id", "node-1")
    kw.setdefault("server_uri", "127.0.0.1:1")
    kw.setdefault("min_interval", 0.0)
    return ConfigCache(path, **kw)


def test_a_restarted_client_starts_from_the_cached_config(tmp_path: Path) -> None:
    path = tmp_path / "c" / "xds.cache"
    before = feed(new_protocol(), make_cache(path), *good_config())
    assert before.is_resolved("p.mesh:80")

    fresh = AdsProtocol({"id": "node-1"})  # a new process, no stream yet
    assert make_cache(path).restore(fresh)
    after = fresh.state
    assert after.is_resolved("p.mesh:80")
    assert (after.listeners, after.route_configs, after.clusters, after.assignments) == (
        before.listeners,
        before.route_configs,
        before.clusters,
        before.assignments,
    )
    # The first stream re-subscribes to all of it, with no version: the
    # server sends everything fresh.
    requests = read_requests(fresh.start_stream())
    assert [(r.type_url, list(r.resource_names), r.version_info) for r in requests] == [
        (LDS, ["p.mesh:80"], ""),
        (RDS, ["r1"], ""),
        (CDS, ["c1", "c2"], ""),
        (EDS, ["c2", "svc1"], ""),
    ]


def test_the_file_is_private_and_written_by_rename(tmp_path: Path) -> None:
    path = tmp_path / "xds.cache"
    cache = make_cache(path)
    feed(new_protocol(), cache, *good_config())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["xds.cache"]  # no temp file left
    header = json.loads(path.read_bytes().split(b"\n", 1)[0])
    assert header["format"] == "proxyless-mesh-xds-cache"
    assert header["schema"] == 1
    assert len(header["sha256"]) == 64
    first = cache.writes
    with open(path, "rb") as reader:  # a reader of the old file...
        old = path.read_bytes()
        feed(new_protocol(), cache, *good_config(port=8081))
        assert reader.read() == old  # ...keeps it whole: replaced, not rewritten in place
    assert cache.writes > first
    assert path.read_bytes() != old


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-10],  # truncated
        lambda b: b[:-3] + b"XYZ",  # modified body
        lambda b: b.split(b"\n", 1)[1],  # no header
        lambda b: b"",  # empty
        lambda b: b.replace(b'"schema": 1', b'"schema": 2'),  # newer schema
        lambda b: b.replace(b"node-1", b"node-2", 1),  # another node's cache
        lambda b: b"\xff\xfe garbage\n\x00",
    ],
)
def test_a_damaged_or_foreign_cache_is_ignored(tmp_path: Path, damage: Any) -> None:
    path = tmp_path / "xds.cache"
    feed(new_protocol(), make_cache(path), *good_config())
    path.write_bytes(damage(path.read_bytes()))
    fresh = AdsProtocol({"id": "node-1"})
    assert make_cache(path).load() is None
    assert not make_cache(path).restore(fresh)
    assert not fresh.state.listeners


def test_a_cache_from_another_xds_server_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "xds.cache"
    feed(new_protocol(), make_cache(path), *good_config())
    assert make_cache(path, server_uri="10.0.0.9:15010").load() is None
    assert make_cache(path).load() is not None


def test_rejected_updates_are_not_cached_the_last_good_one_is(tmp_path: Path) -> None:
    path = tmp_path / "xds.cache"
    protocol, cache = new_protocol(), make_cache(path)
    feed(protocol, cache, *good_config())
    bad = routes("r1", {"c1": 0, "c2": 0})  # all-zero weights: NACKed
    outcome = protocol.handle_response(response(RDS, "2", bad))
    assert outcome.rejected
    cache.record(response(RDS, "2", bad), outcome.rejected)
    cache.save(protocol.state)
    cache.flush()
    fresh = AdsProtocol({"id": "node-1"})
    assert make_cache(path).restore(fresh)
    weights = [
        (c.name, c.weight)
        for c in fresh.state.route_configs["r1"].virtual_hosts[0].routes[0].action.clusters  # type: ignore[union-attr]
    ]
    assert weights == [("c1", 80), ("c2", 20)]


def test_resources_no_longer_used_are_dropped_from_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "xds.cache"
    protocol, cache = new_protocol(), make_cache(path)
    feed(protocol, cache, *good_config())
    feed(protocol, cache, response(RDS, "2", routes("r1", {"c1": 100})))
    cached = make_cache(path).load()
    assert cached is not None
    assert set(cached.resources[ResourceType.CLUSTER]) == {"c1"}
    assert set(cached.resources[ResourceType.CLUSTER_LOAD_ASSIGNMENT]) == {"svc1"}


def tls_cluster(name: str, key: bytes) -> Any:
    msg = cluster(name)
    ctx = tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificates=[common_pb2.TlsCertificate(private_key={"inline_bytes": key})]
        )
    )
    msg.transport_socket.name = "envoy.transport_sockets.tls"
    msg.transport_socket.typed_config.Pack(ctx)
    return msg


def test_key_material_is_never_written(tmp_path: Path) -> None:
    pem = b"-----BEGIN PRIVATE KEY-----\nMIIEvQ...\n-----END PRIVATE KEY-----\n"
    assert contains_key_material(packed(tls_cluster("c2", pem)))
    assert contains_key_material(packed(tls_cluster("c2", b"\x30\x82 DER bytes")))
    assert not contains_key_material(packed(cluster("c2")))
    path = tmp_path / "xds.cache"
    cache = make_cache(path)
    protocol = new_protocol()
    feed(protocol, cache, *good_config())
    secret = response(CDS, "2", cluster("c1", "svc1"), tls_cluster("c2", pem))
    cache.record(secret, [])
    cache.save(protocol.state)
    cache.flush()
    data = path.read_bytes()
    assert b"PRIVATE KEY" not in data
    assert b"DER bytes" not in data
    cached = make_cache(path).load()
    assert cached is not None
    assert set(cached.resources[ResourceType.CLUSTER]) == {"c1"}


def test_writes_are_throttled_and_flush_writes_the_last_state(tmp_path: Path) -> None:
    now = [100.0]
    path = tmp_path / "xds.cache"
    cache = make_cache(path, min_interval=5.0, clock=lambda: now[0])
    protocol = new_protocol()
    for r in good_config():
        outcome = protocol.handle_response(r)
        cache.record(r, outcome.rejected)
        cache.save(protocol.state)  # no running loop: the later ones wait for flush
    assert cache.writes == 1
    cache.flush()
    assert cache.writes == 2
    cached = make_cache(path).load()
    assert cached is not None
    assert set(cached.resources[ResourceType.CLUSTER_LOAD_ASSIGNMENT]) == {"c2", "svc1"}


def test_an_unwritable_path_does_not_raise(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = make_cache(blocker / "sub" / "xds.cache")
    feed(new_protocol(), cache, *good_config())  # logs a warning, no exception
    assert cache.writes == 0


def boot(section: dict[str, Any]) -> Bootstrap:
    return Bootstrap(xds_servers=(XdsServer("cp:15010"),), node_id="n1", proxyless_mesh=section)


def test_path_comes_from_the_bootstrap_and_is_on_by_default(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    default = ConfigCache.from_bootstrap(boot({}), env)
    assert default is not None
    assert default.path == default_cache_path(boot({}), env)
    assert default.path.parent == tmp_path / "proxyless-mesh"
    other = default_cache_path(Bootstrap(xds_servers=(XdsServer("cp:15010"),), node_id="n2"), env)
    assert other != default.path  # one file per node
    chosen = ConfigCache.from_bootstrap(boot({CACHE_PATH_FIELD: str(tmp_path / "x.cache")}))
    assert chosen is not None and chosen.path == tmp_path / "x.cache"
    assert ConfigCache.from_bootstrap(boot({CACHE_PATH_FIELD: False})) is None
    assert ConfigCache.from_bootstrap(boot({CACHE_PATH_FIELD: ""})) is None
    # The field survives the bootstrap's JSON round trip (grpcio ignores it).
    text = boot({CACHE_PATH_FIELD: "/var/cache/x"}).to_json()
    assert Bootstrap.from_json(text).proxyless_mesh[CACHE_PATH_FIELD] == "/var/cache/x"


def test_the_cache_path_is_not_world_readable_directory(tmp_path: Path) -> None:
    path = tmp_path / "new-dir" / "xds.cache"
    feed(new_protocol(), make_cache(path), *good_config())
    assert stat.S_IMODE(os.stat(path.parent).st_mode) & 0o077 == 0
