"""WorkloadGroups from `--workload-groups-dir`: the back-compatible source.

The kind is parsed by the config loader too (config/parse_workload_group.py, the one
spec parser both use); this module keeps the older flag working: a directory whose
WorkloadGroup documents are read on their own (other kinds skipped), reported as
flat "file: WorkloadGroup field: message" strings, never ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from mesh_control_plane.config.parse_workload_group import parse_group_spec
from mesh_control_plane.config.probe import Probe
from mesh_control_plane.config.workload_group import WorkloadGroup

__all__ = [
    "Probe",
    "WorkloadGroup",
    "WorkloadGroupError",
    "load_workload_groups",
    "parse_workload_group",
]


class WorkloadGroupError(ValueError):
    """A WorkloadGroup document is invalid; `problems` lists every reason."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def parse_workload_group(raw: Mapping[str, Any], *, file: str = "") -> WorkloadGroup:
    """One WorkloadGroup from its YAML mapping (apiVersion/kind/metadata/spec)."""
    problems: list[str] = []
    where = file or "<WorkloadGroup>"

    def bad(path: str, message: str) -> None:
        problems.append(f"{where}: WorkloadGroup {path}: {message}")

    if raw.get("kind") != "WorkloadGroup":
        bad("kind", f"expected WorkloadGroup, got {raw.get('kind')!r}")
    api = raw.get("apiVersion", "")
    if not str(api).startswith("networking.istio.io/"):
        bad("apiVersion", f"expected networking.istio.io/v1, got {api!r}")
    meta = raw.get("metadata")
    if not isinstance(meta, Mapping):
        bad("metadata", "is missing" if meta is None else "expected a mapping")
        meta = {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        bad("metadata.name", "is missing")
        name = ""
    namespace = str(meta.get("namespace", "default"))
    group = parse_group_spec(bad, raw.get("spec"), namespace=namespace, name=name, file=file)
    if problems:
        raise WorkloadGroupError(problems)
    return group


def load_workload_groups(directory: Path) -> tuple[WorkloadGroup, ...]:
    """Every WorkloadGroup document in the YAML files under `directory` (other kinds
    are skipped: they belong to the config loader). Raises WorkloadGroupError with
    every problem of every file."""
    groups: list[WorkloadGroup] = []
    problems: list[str] = []
    for path in sorted(Path(directory).rglob("*.y*ml")):
        if any(part.startswith(".") for part in path.relative_to(directory).parts):
            continue
        rel = path.relative_to(directory).as_posix()
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            problems.append(f"{rel}: not valid YAML: {exc}")
            continue
        for doc in docs:
            if isinstance(doc, Mapping) and doc.get("kind") == "WorkloadGroup":
                try:
                    groups.append(parse_workload_group(doc, file=rel))
                except WorkloadGroupError as exc:
                    problems.extend(exc.problems)
    if problems:
        raise WorkloadGroupError(problems)
    return tuple(sorted(groups, key=lambda g: (g.namespace, g.name)))
