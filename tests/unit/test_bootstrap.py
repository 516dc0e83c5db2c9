"""Bootstrap parsing: gRPC's JSON format, its round trip, and every error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxyless_mesh.bootstrap import Bootstrap, XdsServer, make_bootstrap_json
from proxyless_mesh.errors import BootstrapError, MeshError
from proxyless_mesh.model import Locality

FULL = {
    "xds_servers": [
        {
            "server_uri": "cp.mesh:15010",
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        },
        {"server_uri": "backup:15010", "channel_creds": [{"type": "insecure"}]},
    ],
    "node": {
        "id": "sidecar~10.0.0.1~reviews-1.shop~shop.svc",
        "cluster": "reviews",
        "locality": {"region": "eu", "zone": "eu-1a", "sub_zone": "rack7"},
        "metadata": {"NAMESPACE": "shop", "LABELS": {"app": "reviews"}},
    },
    "server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%s",
    "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {}}},
    "authorities": {"ignored": {}},
}


def test_parses_every_field() -> None:
    b = Bootstrap.from_json(json.dumps(FULL))
    assert b.xds_servers == (
        XdsServer("cp.mesh:15010", ("insecure",), ("xds_v3",)),
        XdsServer("backup:15010", ("insecure",), ()),
    )
    assert b.node_id == "sidecar~10.0.0.1~reviews-1.shop~shop.svc"
    assert b.node_cluster == "reviews"
    assert b.locality == Locality("eu", "eu-1a", "rack7")
    assert b.node_metadata == {"NAMESPACE": "shop", "LABELS": {"app": "reviews"}}
    assert (
        b.server_listener_resource_name_template == FULL["server_listener_resource_name_template"]
    )
    assert b.certificate_providers == FULL["certificate_providers"]


def test_round_trips() -> None:
    b = Bootstrap.from_json(json.dumps(FULL))
    assert Bootstrap.from_json(b.to_json()) == b
    minimal = Bootstrap.from_json(
        '{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "insecure"}]}]}'
    )
    assert minimal.node_id == ""
    assert minimal.server_listener_resource_name_template is None
    assert Bootstrap.from_json(minimal.to_json()) == minimal


def test_metadata_is_read_only() -> None:
    b = Bootstrap.from_json(json.dumps(FULL))
    with pytest.raises(TypeError):
        b.node_metadata["NAMESPACE"] = "other"  # type: ignore[index]


def test_make_bootstrap_json() -> None:
    text = make_bootstrap_json(
        server_uri="127.0.0.1:15010",
        node_id="n1",
        namespace="shop",
        service_account="reviews",
        cluster="reviews",
        locality=Locality("eu", "eu-1a"),
        metadata={"LABELS": {"app": "reviews"}, "NAMESPACE": "overridden"},
    )
    doc = json.loads(text)
    assert doc["xds_servers"] == [
        {
            "server_uri": "127.0.0.1:15010",
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }
    ]
    assert doc["node"] == {
        "id": "n1",
        "cluster": "reviews",
        "locality": {"region": "eu", "zone": "eu-1a"},
        "metadata": {
            "LABELS": {"app": "reviews"},
            "NAMESPACE": "shop",
            "SERVICE_ACCOUNT": "reviews",
        },
    }
    assert (
        doc["server_listener_resource_name_template"]
        == "grpc/server?xds.resource.listening_address=%s"
    )
    b = Bootstrap.from_json(text)
    assert b.node_metadata["NAMESPACE"] == "shop"


def _error(text: str, source: str = "<string>") -> str:
    with pytest.raises(BootstrapError) as info:
        Bootstrap.from_json(text, source=source)
    assert isinstance(info.value, MeshError)
    return str(info.value)


def test_invalid_json_names_line_and_column() -> None:
    msg = _error('{\n  "xds_servers": [,]\n}', source="/etc/mesh/bootstrap.json")
    assert msg.startswith("/etc/mesh/bootstrap.json: invalid JSON at line 2 column 19")


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("[]", "must be a JSON object"),
        ("{}", "field 'xds_servers' is missing"),
        ('{"xds_servers": []}', "field 'xds_servers' must be a non-empty list"),
        ('{"xds_servers": [{"channel_creds": []}]}', "'xds_servers[0].server_uri' is missing"),
        ('{"xds_servers": [{"server_uri": "a:1"}]}', "'xds_servers[0].channel_creds' is missing"),
        (
            '{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{}]}]}',
            "'xds_servers[0].channel_creds[0]' must be an object with a 'type'",
        ),
        (
            '{"xds_servers": [{"server_uri": 5, "channel_creds": []}]}',
            "'xds_servers[0].server_uri' must be a string, got int",
        ),
        (
            '{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "insecure"}]}],'
            ' "node": {"metadata": []}}',
            "'node.metadata' must be an object, got list",
        ),
    ],
)
def test_field_errors(doc: str, expected: str) -> None:
    msg = _error(doc, source="b.json")
    assert msg.startswith("b.json: ")
    assert expected in msg


def test_unsupported_channel_creds() -> None:
    doc = '{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "tls"}]}]}'
    msg = _error(doc)
    assert "'xds_servers[0].channel_creds' has no supported type (got tls)" in msg
    assert "only 'insecure' is supported now" in msg
    # gRPC uses the first type it knows: a known-but-unimplemented one first is an
    # error, not silently skipped (we would connect differently from grpcio).
    doc = (
        '{"xds_servers": [{"server_uri": "a:1", "channel_creds":'
        ' [{"type": "google_default"}, {"type": "insecure"}]}]}'
    )
    assert "no supported type" in _error(doc)
    # An unknown type is skipped, as gRPC does.
    doc = (
        '{"xds_servers": [{"server_uri": "a:1", "channel_creds":'
        ' [{"type": "future_thing"}, {"type": "insecure"}]}]}'
    )
    assert Bootstrap.from_json(doc).xds_servers[0].channel_creds == ("future_thing", "insecure")


def test_from_file(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(FULL))
    assert Bootstrap.from_file(path).node_cluster == "reviews"
    path.write_text("{}")
    with pytest.raises(BootstrapError, match=f"{path}: field 'xds_servers' is missing"):
        Bootstrap.from_file(path)


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(BootstrapError, match=r"cannot read xDS bootstrap file .*nope\.json"):
        Bootstrap.from_file(missing)


def test_from_env_path_then_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(FULL))
    other = dict(FULL, node={"id": "from-config"})
    monkeypatch.setenv("GRPC_XDS_BOOTSTRAP_CONFIG", json.dumps(other))
    monkeypatch.setenv("GRPC_XDS_BOOTSTRAP", str(path))
    assert Bootstrap.from_env().node_cluster == "reviews"  # the path wins, as in grpcio
    monkeypatch.delenv("GRPC_XDS_BOOTSTRAP")
    assert Bootstrap.from_env().node_id == "from-config"


def test_from_env_errors_name_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_XDS_BOOTSTRAP", raising=False)
    monkeypatch.delenv("GRPC_XDS_BOOTSTRAP_CONFIG", raising=False)
    with pytest.raises(BootstrapError, match=r"neither GRPC_XDS_BOOTSTRAP .* nor"):
        Bootstrap.from_env()
    monkeypatch.setenv("GRPC_XDS_BOOTSTRAP_CONFIG", "{oops")
    with pytest.raises(BootstrapError, match=r"^\$GRPC_XDS_BOOTSTRAP_CONFIG: invalid JSON"):
        Bootstrap.from_env()
    assert Bootstrap.from_env({"GRPC_XDS_BOOTSTRAP_CONFIG": json.dumps(FULL)}).node_cluster
