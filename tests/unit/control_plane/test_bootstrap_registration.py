"""`meshctl bootstrap --workload-group/--workload-port/--label` writes the node
metadata a Mesh registers from by itself (`Mesh(register=None)`): the path a
gunicorn worker, which cannot be handed `register=`, joins the mesh by."""

from __future__ import annotations

from pathlib import Path

import pytest
from mesh_control_plane.cli.main import main

from proxyless_mesh import Mesh
from proxyless_mesh.bootstrap import Bootstrap
from proxyless_mesh.registration import Registration
from proxyless_mesh.telemetry import Workload

BASE = ["bootstrap", "--xds-address", "127.0.0.1:1", "--node-id", "r-1"]
BASE += ["--namespace", "shop", "--service-account", "reviews"]


def write(tmp_path: Path, *flags: str) -> Bootstrap:
    path = tmp_path / "bootstrap.json"
    assert main([*BASE, "-o", str(path), *flags]) == 0
    return Bootstrap.from_file(path)


def test_flags_become_a_registration(tmp_path: Path) -> None:
    bootstrap = write(
        tmp_path,
        *("--workload-group", "shop/reviews", "--workload-port", "http=0"),
        *("--workload-port", "grpc=7070", "--label", "version=v2", "--label", "tier=web"),
        *("--workload-address", "10.0.0.7"),
    )
    registration = Registration.from_bootstrap(bootstrap)
    assert registration is not None
    assert registration.group == "shop/reviews"
    assert registration.ports == {"http": 0, "grpc": 7070}
    assert registration.labels == {"version": "v2", "tier": "web"}
    assert registration.address == "10.0.0.7"
    assert registration.awaited == ("http",)  # 0: waits for the server helper


def test_mesh_registers_from_the_bootstrap_unless_told_not_to(tmp_path: Path) -> None:
    bootstrap = write(tmp_path, "--workload-group", "shop/reviews", "--label", "version=v1")
    (implicit,) = Mesh(bootstrap).registrars
    assert isinstance(implicit, Registration) and implicit.ports is None
    assert implicit.labels == {"version": "v1"}
    assert Mesh(bootstrap, register=()).registrars == ()


def test_labels_alone_register_nothing(tmp_path: Path) -> None:
    bootstrap = write(tmp_path, "--label", "version=v1")
    assert bootstrap.node_metadata["LABELS"] == {"version": "v1"}
    assert Registration.from_bootstrap(bootstrap) is None
    assert Mesh(bootstrap).registrars == ()


@pytest.mark.parametrize(
    "flags",
    [("--workload-port", "http=0"), ("--workload-port", "http=x"), ("--label", "novalue")],
)
def test_bad_flags_are_refused(tmp_path: Path, flags: tuple[str, str]) -> None:
    out = tmp_path / "b.json"
    try:
        code = main([*BASE, "-o", str(out), *flags])
    except SystemExit as refused:  # argparse's own refusal
        code = int(refused.code or 0)
    assert code == 2 and not out.exists()


def test_metric_identity_flags_name_the_workload_as_istio_does(tmp_path: Path) -> None:

    default = Workload.from_bootstrap(write(tmp_path, "--label", "version=v2"))
    assert (default.name, default.cluster) == ("r", "Kubernetes")  # node id r-1, suffix dropped
    assert default.peer.canonical_revision == "v2"
    named = Workload.from_bootstrap(
        write(tmp_path, "--workload-name", "reviews-v2", "--cluster-id", "east")
    )
    assert (named.name, named.cluster) == ("reviews-v2", "east")
