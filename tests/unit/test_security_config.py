"""Identity settings from the bootstrap: the fields `meshctl bootstrap` writes,
the token fallback to $PROXYLESS_MESH_TOKEN, and grpcio still accepting the
file (it must, since one file drives both)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from mesh_control_plane.cli.main import main as meshctl

from proxyless_mesh.bootstrap import Bootstrap, make_bootstrap_json
from proxyless_mesh.errors import IdentityConfigError
from proxyless_mesh.security import IdentityConfig, SpiffeId

BASE = {"server_uri": "127.0.0.1:1", "node_id": "n1", "namespace": "shop"}


def _bootstrap(**kw: str) -> Bootstrap:
    args = {**BASE, "service_account": "alice", **kw}
    return Bootstrap.from_json(make_bootstrap_json(**args))  # type: ignore[arg-type]


def test_identity_from_bootstrap(tmp_path: Path) -> None:
    b = _bootstrap(
        ca_address="127.0.0.1:15012",
        token="tok",
        trust_domain="example.org",
        credentials_dir=str(tmp_path),
    )
    config = IdentityConfig.from_bootstrap(b, environ={})
    assert config.ca_address == "127.0.0.1:15012"
    assert config.identity == SpiffeId("example.org", "shop", "alice")
    assert config.token == "tok" and config.credentials_dir == tmp_path
    assert "tok" not in repr(config)
    # The token stays out of node metadata: every xDS request carries that.
    assert "tok" not in json.dumps(dict(b.node_metadata))
    provider = b.certificate_providers["default"]
    assert provider["plugin_name"] == "file_watcher"
    assert provider["config"]["private_key_file"] == str(tmp_path / "key.pem")
    assert Bootstrap.from_json(b.to_json()) == b


def test_token_from_the_environment_and_defaults() -> None:
    b = _bootstrap(ca_address="127.0.0.1:15012")
    config = IdentityConfig.from_bootstrap(b, environ={"PROXYLESS_MESH_TOKEN": "from-env"})
    assert config.token == "from-env"
    assert config.identity.trust_domain == "cluster.local"
    assert config.credentials_dir is None
    assert IdentityConfig.from_bootstrap(b, environ={}).token is None
    assert not b.certificate_providers


def test_missing_pieces_are_named() -> None:
    with pytest.raises(IdentityConfigError, match=r"proxyless_mesh\.ca_address"):
        IdentityConfig.from_bootstrap(_bootstrap(), environ={})
    doc = json.loads(make_bootstrap_json(**BASE, service_account="a", ca_address="x:1"))
    del doc["node"]["metadata"]["SERVICE_ACCOUNT"]
    with pytest.raises(IdentityConfigError, match="SERVICE_ACCOUNT"):
        IdentityConfig.from_bootstrap(Bootstrap.from_json(json.dumps(doc)), environ={})


def test_meshctl_bootstrap_writes_identity_fields_0600_with_a_token(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    argv = [
        "bootstrap",
        "--xds-address=127.0.0.1:1",
        "--node-id=n1",
        "--namespace=shop",
        "--service-account=alice",
        "--ca-address=127.0.0.1:2",
        "--token=secret",
        f"--credentials-dir={tmp_path / 'creds'}",
        f"-o={out}",
    ]
    assert meshctl(argv) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    config = IdentityConfig.from_bootstrap(Bootstrap.from_file(out), environ={})
    assert config.token == "secret" and config.ca_address == "127.0.0.1:2"


GRPC_PROBE = """
import grpc
channel = grpc.insecure_channel("xds:///probe.mesh:80")
try:
    channel.unary_unary("/probe/Probe")(b"", timeout=2)
except grpc.RpcError as exc:
    print(exc.details())
"""


def _grpc_verdict(bootstrap_json: str) -> str:
    env = {**os.environ, "GRPC_XDS_BOOTSTRAP_CONFIG": bootstrap_json, "GRPC_VERBOSITY": "NONE"}
    env.pop("GRPC_XDS_BOOTSTRAP", None)
    done = subprocess.run(
        [sys.executable, "-c", GRPC_PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    return done.stdout


@pytest.mark.interop  # starts grpcio's own xDS client
def test_grpcio_accepts_the_bootstrap_with_identity_fields(tmp_path: Path) -> None:
    text = make_bootstrap_json(
        **BASE,
        service_account="alice",
        ca_address="127.0.0.1:2",
        token="secret",
        credentials_dir=str(tmp_path),
    )
    verdict = _grpc_verdict(text)
    # Parsed, then failed only to reach the (absent) xDS server.
    assert "LDS resource probe.mesh:80" in verdict and "Failed to create XdsClient" not in verdict
    # The probe does tell a bad bootstrap apart.
    doc = json.loads(text)
    doc["certificate_providers"]["default"]["config"]["refresh_interval"] = "soon"
    assert "Failed to create XdsClient" in _grpc_verdict(json.dumps(doc))
