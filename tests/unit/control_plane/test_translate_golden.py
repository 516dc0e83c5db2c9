"""Golden files: what each sample config becomes on the wire, per client kind.

The files are the reviewable record of the translator's output; a change in them
is a change in what every client receives. ``REFRESH_GOLDEN=1`` rewrites them
(then read the diff: that is the point).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from google.protobuf import json_format
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import TYPE_URLS, ClientKind, NodeInfo, ResourceSet, translate

from .samples import SAMPLES

GOLDEN = Path(__file__).parent / "golden"


def render(rs: ResourceSet) -> str:
    """One JSON document: type (short name, in LDS/RDS/CDS/EDS order) -> name -> resource."""
    document = {
        type_url.rsplit(".", 1)[-1]: {
            name: json.loads(json_format.MessageToJson(message, sort_keys=True))
            for name, message in rs.resources[type_url].items()
        }
        for type_url in TYPE_URLS
    }
    return json.dumps(document, indent=2) + "\n"


@pytest.mark.parametrize("kind", list(ClientKind), ids=lambda kind: kind.value)
@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_translation_matches_golden(sample: str, kind: ClientKind) -> None:
    config = SAMPLES[sample]()
    rs = translate(config, build_static_registry(config), NodeInfo(id="test", kind=kind))
    rendered = render(rs)
    path = GOLDEN / f"{sample}.{kind.value}.json"
    if os.environ.get("REFRESH_GOLDEN") == "1":
        path.write_text(rendered)
    if not path.exists():
        pytest.fail(f"{path} is missing: run with REFRESH_GOLDEN=1 and review it")
    assert rendered == path.read_text(), f"{path} differs: REFRESH_GOLDEN=1 and review the diff"
