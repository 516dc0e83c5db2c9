"""A WorkloadGroup in the config directory, no --workload-groups-dir: a real control
plane admits a real workload into it, and a config reload that removes the group
refuses new members while the admitted one keeps serving (the documented rule)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from mesh_control_plane.registry.runtime import RegistrySettings
from meshlab import LocalMesh, subsets_rule
from registration_plane import (
    GRACE,
    HOST,
    SERVICE_ENTRY,
    Plane,
    group,
    serve_plane,
    start_workload,
    wait_for,
)


@pytest.fixture
def plane(lab: LocalMesh) -> Iterator[Plane]:
    """The only WorkloadGroup source is the config directory (groups.yaml)."""
    config_dir = lab.workdir / "config"
    config_dir.mkdir()
    (config_dir / "reviews.yaml").write_text(
        json.dumps(SERVICE_ENTRY) + "\n---\n" + subsets_rule(HOST, ["v1"])
    )
    (config_dir / "groups.yaml").write_text(json.dumps(group("reviews", "reviews")))
    registry = RegistrySettings(grace=GRACE)  # no workload_groups_dir
    yield from serve_plane(lab, Plane(config_dir, lab.workdir / "mesh-ca", registry))


def test_a_workload_joins_a_group_from_the_config_dir(lab: LocalMesh, plane: Plane) -> None:
    assert plane.plane.registry.settings.workload_groups_dir is None
    first = start_workload(lab, plane, "reviews-a", "v1")
    assert "port" in first.ready, first.ready
    wait_for(
        lambda: plane.members().get("reviews-a", {}).get("state") == "HEALTHY", 10, "admission"
    )
    assert plane.members()["reviews-a"]["group"] == "default/reviews"

    # The config watcher's reload applies the removal: new members are refused,
    # the admitted one is not evicted.
    (plane.config_dir / "groups.yaml").unlink()
    wait_for(lambda: plane.group_refs() == [], 10, "the reload")
    refused = start_workload(lab, plane, "reviews-b", "v1")
    assert "NOT_FOUND" in refused.ready["refused"], refused.ready
    assert refused.popen.wait(10) == 3
    assert plane.members()["reviews-a"]["state"] == "HEALTHY"
    assert "reviews-b" not in plane.members()
    # It followed its own server listener as a server (gRFC A36), not as a
    # client one (which it would NACK): read once the process has ended.
    assert first.stop() == 0
    assert "NACK" not in first.log.read_text()
