"""A watcher's loads parse only the files whose text changed (ParsedFiles),
and give exactly what a load from scratch gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from mesh_control_plane.config import ConfigLoadError, load_config_dir
from mesh_control_plane.config.documents import Document
from mesh_control_plane.config.parsed_files import ParsedFiles

SERVICE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.default.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints: [{{address: {address}}}]
"""


class CountingParse:
    """Counts the files `ParsedFiles` really parses."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from mesh_control_plane.config import loader

        self.files: list[str] = []
        real = loader._parse_text

        def counting(file: str, text: str) -> object:
            self.files.append(file)
            return real(file, text)

        monkeypatch.setattr(loader, "_parse_text", counting)


def test_unchanged_files_are_not_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.yaml").write_text(SERVICE.format(name=name, address="10.0.0.1"))
    parsed, counted = ParsedFiles(), CountingParse(monkeypatch)
    first = load_config_dir(tmp_path, parsed=parsed)
    assert sorted(counted.files) == ["a.yaml", "b.yaml", "c.yaml"]

    # same length, same name: only the text tells the change apart
    (tmp_path / "b.yaml").write_text(SERVICE.format(name="b", address="10.0.0.2"))
    counted.files.clear()
    second = load_config_dir(tmp_path, parsed=parsed)
    assert counted.files == ["b.yaml"]
    assert second == load_config_dir(tmp_path)  # the same as parsing every file
    assert second != first

    (tmp_path / "c.yaml").unlink()
    counted.files.clear()
    third = load_config_dir(tmp_path, parsed=parsed)
    assert counted.files == []
    assert [s.meta.name for s in third.service_entries] == ["a", "b"]


def test_each_load_gets_objects_of_its_own(tmp_path: Path) -> None:
    """Validation may change what it is given: a cached parse must not
    carry that into the next load."""
    parsed, path = ParsedFiles(), tmp_path / "a.yaml"
    docs, _ = parsed.parse(path, "text", lambda _: ([Document("a.yaml", {"hosts": ["a"]})], []))
    docs[0].data["hosts"].append("changed")  # type: ignore[index]
    again, _ = parsed.parse(path, "text", lambda _: pytest.fail("parsed again"))
    assert again[0].data == {"hosts": ["a"]}


def test_a_broken_file_is_reported_on_every_load(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(SERVICE.format(name="a", address="10.0.0.1"))
    (tmp_path / "bad.yaml").write_text("kind: [unclosed\n")
    parsed = ParsedFiles()
    for _ in range(2):
        with pytest.raises(ConfigLoadError) as err:
            load_config_dir(tmp_path, parsed=parsed)
        assert [p.file for p in err.value.problems] == ["bad.yaml"]
