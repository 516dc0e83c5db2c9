"""WorkloadGroup as a config kind: parsed strictly by the loader, carried in
MeshConfig.workload_groups, and combined with --workload-groups-dir by the runtime."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from mesh_control_plane.config import ConfigLoadError, MeshConfig, load_config_dir, parse_documents
from mesh_control_plane.registry.embedded import RegistrationRefused, RegistrationRequest
from mesh_control_plane.registry.runtime import RegistryRuntime, RegistrySettings
from mesh_control_plane.registry.workload_group import WorkloadGroupError, parse_workload_group

GROUP: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "WorkloadGroup",
    "metadata": {"name": "reviews", "namespace": "shop"},
    "spec": {
        "metadata": {"labels": {"app": "reviews"}},
        "template": {
            "serviceAccount": "reviews",
            "ports": {"http": 9080},
            "labels": {"tier": "backend"},
            "network": "net1",
            "locality": "eu/west-1",
            "weight": 3,
        },
        "probe": {"httpGet": {"port": 9080, "path": "/ready"}, "periodSeconds": 2},
    },
}


def with_spec(path: list[str], value: object) -> dict[str, Any]:
    doc = copy.deepcopy(GROUP)
    target = doc["spec"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def test_a_good_group_is_loaded_into_the_config() -> None:
    config = parse_documents([("groups.yaml", GROUP)])
    (group,) = config.workload_groups
    assert (group.namespace, group.name, group.file) == ("shop", "reviews", "groups.yaml")
    assert dict(group.labels) == {"app": "reviews"}
    assert group.service_account == "reviews"
    assert dict(group.ports) == {"http": 9080}
    assert dict(group.template_labels) == {"tier": "backend"}
    assert (group.network, group.locality, group.weight) == ("net1", "eu/west-1", 3)
    assert group.probe is not None
    assert (group.probe.kind, group.probe.port, group.probe.path) == ("http", 9080, "/ready")
    assert group.probe.period == 2.0
    assert group.meta.ref == "WorkloadGroup shop/reviews"


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        (["template", "weight"], -1, "spec.template.weight", "non-negative integer"),
        (["template", "weight"], True, "spec.template.weight", "non-negative integer"),
        (["template", "colour"], "blue", "spec.template.colour", "unknown field"),
        (["template", "address"], "10.0.0.1", "spec.template.address", "no address"),
        (["template", "serviceAccount"], 7, "spec.template.serviceAccount", "string"),
        (["template", "ports"], {"http": 70000}, "spec.template.ports", "1-65535"),
        (["probe", "exec"], {"command": ["true"]}, "spec.probe.exec", "cannot run commands"),
        (["metadata", "labels"], {"app": 1}, "spec.metadata.labels", "strings"),
    ],
)
def test_a_bad_field_names_file_resource_and_field(
    path: list[str], value: object, field: str, words: str
) -> None:
    with pytest.raises(ConfigLoadError) as info:
        parse_documents([("groups.yaml", with_spec(path, value))])
    problems = [p for p in info.value.problems if p.field == field]
    assert problems, info.value.problems
    assert problems[0].file == "groups.yaml"
    assert problems[0].resource == "WorkloadGroup shop/reviews"
    assert words in problems[0].message


def test_envelope_errors_and_duplicates_are_the_loaders(tmp_path: Path) -> None:
    bad_name = copy.deepcopy(GROUP)
    bad_name["metadata"]["name"] = "Not_A_Name"
    with pytest.raises(ConfigLoadError) as info:
        parse_documents([("a.yaml", bad_name)])
    assert info.value.problems[0].field == "metadata.name"
    (tmp_path / "a.yaml").write_text(json.dumps(GROUP))
    (tmp_path / "b.yaml").write_text(json.dumps(GROUP))
    with pytest.raises(ConfigLoadError) as info:
        load_config_dir(tmp_path)
    (dup,) = info.value.problems
    assert dup.file == "b.yaml" and "also defined in a.yaml" in dup.message


def test_the_groups_dir_keeps_its_flat_error_style() -> None:
    with pytest.raises(WorkloadGroupError) as info:
        parse_workload_group(with_spec(["template", "weight"], -1), file="g.yaml")
    assert info.value.problems == [
        "g.yaml: WorkloadGroup spec.template.weight: expected a non-negative integer, got -1"
    ]


def runtime_with(
    groups_dir: Path | None, config: MeshConfig
) -> RegistryRuntime:  # a runtime that was given `config`
    runtime = RegistryRuntime(RegistrySettings(workload_groups_dir=groups_dir), None)
    runtime.augment(config)
    return runtime


def test_config_dir_wins_over_groups_dir_and_both_are_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = copy.deepcopy(GROUP)
    other["metadata"]["name"] = "ratings"
    old = with_spec(["template", "serviceAccount"], "old-sa")
    (tmp_path / "legacy.yaml").write_text(json.dumps(old) + "\n---\n" + json.dumps(other))
    runtime = runtime_with(tmp_path, parse_documents([("config.yaml", GROUP)]))
    with caplog.at_level(logging.WARNING):
        groups = {g.ref: g for g in runtime.workload_groups()}
        runtime.workload_groups()
    assert set(groups) == {"shop/reviews", "shop/ratings"}
    assert groups["shop/reviews"].service_account == "reviews"  # the config dir's
    assert groups["shop/reviews"].file == "config.yaml"
    warnings = [r.getMessage() for r in caplog.records if "defined in the config" in r.message]
    assert len(warnings) == 1  # once, not on every registration
    assert "config.yaml" in warnings[0] and "legacy.yaml" in warnings[0]


def test_one_directory_for_both_flags_is_not_a_conflict(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "groups.yaml").write_text(json.dumps(GROUP))
    runtime = runtime_with(tmp_path, load_config_dir(tmp_path))
    with caplog.at_level(logging.WARNING):
        (group,) = runtime.workload_groups()
    assert group.ref == "shop/reviews"
    assert not [r for r in caplog.records if "defined in the config" in r.message]


def test_a_config_reload_replaces_the_groups() -> None:
    runtime = runtime_with(None, parse_documents([("g.yaml", GROUP)]))
    assert [g.ref for g in runtime.workload_groups()] == ["shop/reviews"]
    runtime.augment(parse_documents([]))
    assert runtime.workload_groups() == ()


async def test_removing_a_group_refuses_new_members_and_keeps_admitted_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = RegistryRuntime(RegistrySettings(), lambda token: ("shop", "reviews"))
    runtime.augment(parse_documents([("g.yaml", with_spec(["probe"], None))]))
    request = RegistrationRequest(node_id="n1", group="shop/reviews", address="10.0.0.1", token="t")
    runtime.embedded.register(request)
    with caplog.at_level(logging.WARNING):
        runtime.augment(parse_documents([]))
    assert any(
        "shop/reviews was removed" in r.message and "n1" in r.message for r in caplog.records
    )
    with pytest.raises(RegistrationRefused) as info:
        runtime.embedded.register(dataclasses.replace(request, node_id="n2"))
    assert info.value.code == "NOT_FOUND"
    assert set(runtime.embedded.status()["members"]) == {"n1"}
    await runtime.stop()
