"""Configurations from YAML text for the loader's tests: documents from
several texts (each dedented), loaded as one file `gw.yaml`."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from mesh_control_plane.config import ConfigLoadError, MeshConfig, parse_documents


def load(*texts: str) -> MeshConfig:
    docs = [d for text in texts for d in yaml.safe_load_all(textwrap.dedent(text)) if d]
    return parse_documents([("gw.yaml", doc) for doc in docs])


def problems(*texts: str) -> list[str]:
    """What loading the texts is refused for, each as `file: resource: field: message`."""
    with pytest.raises(ConfigLoadError) as caught:
        load(*texts)
    return [str(problem) for problem in caught.value.problems]
