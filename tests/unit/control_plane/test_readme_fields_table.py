"""The README's fields table is the loader's: rendered from the parsers' own
field lists, so a field added to (or refused by) the code without the manual
fails here."""

from __future__ import annotations

from pathlib import Path

from mesh_control_plane.config import ConfigLoadError, parse_documents
from mesh_control_plane.config.supported import FIELDS, TABLE_END, TABLE_START, fields_table

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_table_is_the_generated_one() -> None:
    text = README.read_text()
    start, end = text.index(TABLE_START), text.index(TABLE_END) + len(TABLE_END) + 1
    assert text[start:end] == fields_table(), (
        "README fields table is stale: regenerate it with "
        "`python -m mesh_control_plane.config.supported`"
    )


def test_every_refused_spec_field_is_really_refused_as_not_supported() -> None:
    # The table's claim, checked against the loader for the top-level spec fields.
    kinds = {
        "ServiceEntry spec": ("ServiceEntry", {"hosts": ["a.mesh"], "ports": []}),
        "DestinationRule spec": ("DestinationRule", {"host": "a.mesh"}),
        "VirtualService spec": ("VirtualService", {"hosts": ["a.mesh"], "http": []}),
        "PeerAuthentication spec": ("PeerAuthentication", {}),
        "RequestAuthentication spec": ("RequestAuthentication", {}),
    }
    for where, _accepted, refused in FIELDS:
        if where not in kinds:
            continue
        kind, spec = kinds[where]
        api = "security.istio.io/v1" if "Authentication" in kind else "networking.istio.io/v1"
        for field in refused:
            doc = {
                "apiVersion": api,
                "kind": kind,
                "metadata": {"name": "x"},
                "spec": {**spec, field: {}},
            }
            try:
                parse_documents([("t.yaml", doc)])
            except ConfigLoadError as exc:
                assert f"spec.{field}: not supported yet" in str(exc), (where, field, str(exc))
            else:
                raise AssertionError(f"{where}: {field} was accepted")
