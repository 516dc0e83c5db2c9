"""Every accepted config translates to a consistent snapshot for each client
kind, and every resource decodes with the library's own decoders. A few
generated configs also go through Envoy itself (`--mode validate`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from istio_configs import mesh_documents
from mesh_control_plane.config import parse_documents
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    ClientKind,
    NodeInfo,
    ResourceSet,
    check_consistency,
    translate,
)
from mesh_control_plane.translate.outbound_policy import PASSTHROUGH_CLUSTER

from proxyless_mesh.xds_client import (
    decode_cluster,
    decode_cluster_load_assignment,
    decode_listener,
    decode_route_configuration,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from processes import envoy_binary
from unit.control_plane.test_translate_envoy_accepts import bootstrap_for

SERVER_LISTENER_PREFIX = "grpc/server?"
DECODERS = {
    LISTENER: decode_listener,
    ROUTE: decode_route_configuration,
    CLUSTER: decode_cluster,
    ENDPOINT: decode_cluster_load_assignment,
}


def translated(docs: list[dict[str, Any]], kind: ClientKind) -> ResourceSet:
    config = parse_documents(("gen.yaml", d) for d in docs)
    return translate(config, build_static_registry(config), NodeInfo(id="n", kind=kind))


@given(mesh_documents())
def test_every_accepted_config_is_consistent_and_decodes(docs: list[dict[str, Any]]) -> None:
    for kind in ClientKind:
        rs = translated(docs, kind)
        assert check_consistency(rs) == [], kind
        assert rs.resources[LISTENER], "every service gets a listener"
        for type_url, decode in DECODERS.items():
            if kind is ClientKind.ENVOY and type_url == LISTENER:
                continue  # Envoy listeners are socket listeners, not api_listeners
            for name, msg in rs.resources[type_url].items():
                if name.startswith(SERVER_LISTENER_PREFIX):
                    continue  # inbound listeners: decoded by the inbound side, not here
                if kind is ClientKind.ENVOY and name == PASSTHROUGH_CLUSTER:
                    continue  # ALLOW_ANY's dynamic forward proxy: Envoy's alone
                decoded = decode(msg)
                assert decoded is not None, (kind, name)


@pytest.mark.interop  # runs a real Envoy (--mode validate)
@settings(max_examples=4)
@given(docs=mesh_documents())
def test_envoy_validates_generated_configs(
    docs: list[dict[str, Any]], tmp_path_factory: Any
) -> None:
    rs = translated(docs, ClientKind.ENVOY)
    path = tmp_path_factory.mktemp("envoy") / "bootstrap.json"
    path.write_text(json_format.MessageToJson(bootstrap_for(rs)))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
