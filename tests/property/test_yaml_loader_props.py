"""The YAML loader takes any document: it is accepted, or rejected with a
ConfigLoadError naming the file. Never another exception, never a hang."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from istio_configs import API, mesh_documents
from mesh_control_plane.config import ConfigLoadError, MeshConfig, load_config_dir
from timeouts import time_limit

LIMIT = 10.0  # seconds per load; a few KB of YAML takes milliseconds
FIELDS = [
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "spec",
    "hosts",
    "ports",
    "number",
    "protocol",
    "endpoints",
    "address",
    "labels",
    "http",
    "route",
    "destination",
    "host",
    "subset",
    "subsets",
    "weight",
    "match",
    "uri",
    "prefix",
    "exact",
    "regex",
    "headers",
    "timeout",
    "retries",
    "attempts",
    "perTryTimeout",
    "trafficPolicy",
    "loadBalancer",
    "simple",
    "consistentHash",
    "fault",
    "delay",
    "abort",
    "mirror",
    "rewrite",
    "selector",
    "rules",
    "action",
    "resolution",
    "location",
    "exportTo",
    "gateways",
    "tls",
    "mode",
]
KINDS = [
    "ServiceEntry",
    "VirtualService",
    "DestinationRule",
    "WorkloadEntry",
    "PeerAuthentication",
    "AuthorizationPolicy",
    "RequestAuthentication",
    "Gateway",
    "",
    "serviceentry",
]
weird_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40
) | st.sampled_from(["", "\u202e", "\x00", "🙂" * 5, "a" * 5000, "1e309", "-0", "~", "null"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | weird_text
)
keys = st.sampled_from(FIELDS) | weird_text
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=30,
)


@st.composite
def istio_shaped(draw: st.DrawFn) -> dict[str, Any]:
    """A document with a real header and a random spec: reaches the parsers."""
    doc = {
        "apiVersion": draw(st.sampled_from([API, "security.istio.io/v1", "v1", API + "beta1"])),
        "kind": draw(st.sampled_from(KINDS)),
        "metadata": draw(
            st.fixed_dictionaries({"name": weird_text}, optional={"namespace": weird_text})
        ),
        "spec": draw(values),
    }
    if draw(st.booleans()):
        doc[draw(keys)] = draw(values)
    return doc


def _deep(depth: int) -> str:
    """Nested flow collections, as text: deeper than a representer would write."""
    return "spec: " + "[{a: " * depth + "x" + "}]" * depth + "\n"


@st.composite
def mutated_valid(draw: st.DrawFn) -> list[Any]:
    """A valid mesh with one value replaced somewhere: near-misses."""
    docs: list[Any] = draw(mesh_documents())
    target = draw(st.integers(0, len(docs) - 1))
    node: Any = docs[target]
    for _ in range(draw(st.integers(1, 6))):
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node, key=str)))
            if not isinstance(node[key], dict | list) or draw(st.booleans()):
                node[key] = draw(values)
                break
            node = node[key]
        elif isinstance(node, list) and node:
            i = draw(st.integers(0, len(node) - 1))
            if not isinstance(node[i], dict | list) or draw(st.booleans()):
                node[i] = draw(values)
                break
            node = node[i]
        else:
            break
    return docs


documents = st.one_of(
    st.lists(values, max_size=3),
    st.lists(istio_shaped(), min_size=1, max_size=3),
    mutated_valid(),
)
raw_text = st.one_of(
    st.text(max_size=300),
    st.integers(50, 400).map(_deep),  # deep nesting: rejected or loaded, never a hang
    st.sampled_from(
        [
            "a: &x [*x]",  # recursive alias
            "a: &a [*a, *a]\nb: &b [*b]",
            "!!python/object:os.system x",
            "key: !!binary aGVsbG8=",
            "? [a, b]\n: c",
            "a: 1\na: 2",
            "---\n...\n---\n",
            "\t\x00bad",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nspec: &s {hosts: *s}",
        ]
    ),
)


def check_loads(files: dict[str, str]) -> MeshConfig | None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, text in files.items():
            (root / name).write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            with time_limit(LIMIT):
                return load_config_dir(root)
        except ConfigLoadError as exc:
            named = {p.file for p in exc.problems}
            assert exc.problems, "a rejection must say why"
            assert named & set(files), f"no problem names a file: {exc}"
            return None


@given(documents)
def test_any_documents_are_accepted_or_rejected_with_a_named_file(docs: list[Any]) -> None:
    text = yaml.safe_dump_all(docs, allow_unicode=True)
    check_loads({"mesh.yaml": text})


@given(raw_text)
def test_any_text_is_accepted_or_rejected_with_a_named_file(text: str) -> None:
    check_loads({"a.yaml": text})


@given(mesh_documents())
def test_generated_valid_meshes_are_accepted(docs: list[Any]) -> None:
    text = yaml.safe_dump_all(docs)
    assert check_loads({"mesh.yaml": text}) is not None


@pytest.mark.parametrize(
    "text",
    [
        "- " * 600 + "x",  # these three: too deep for PyYAML's recursive parser
        "[" * 600 + "]" * 600,
        "{" * 2000,
        "a: " + "[" * 100 + "]" * 100,  # parses, but deeper than the loader's limit
    ],
)
def test_very_deep_nesting_is_rejected_with_a_named_file(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "deep.yaml").write_text(text)
        with pytest.raises(ConfigLoadError) as caught, time_limit(LIMIT):
            load_config_dir(Path(tmp))
    assert [p.file for p in caught.value.problems] == ["deep.yaml"]
    assert "nested" in str(caught.value), caught.value


def test_a_huge_string_is_handled_quickly() -> None:
    docs = [{"apiVersion": API, "kind": "ServiceEntry", "metadata": {"name": "x" * 2_000_000}}]
    check_loads({"big.yaml": yaml.safe_dump_all(docs)})
