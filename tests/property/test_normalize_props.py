"""Path normalization: idempotent, and a normalized path never climbs out of
the prefix it was written under (no `..` survives)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxyless_mesh.policy import MalformedRequestError, PathNormalization, normalize_path

pieces = st.sampled_from(
    [
        "a",
        "b",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        ".%2e",
        "%2f",
        "%5C",
        "\\",
        "/",
        "//",
        "%41",
        "%",
        "%zz",
        "%00",
        "~",
        "é",
        " ",
        "?",
        "#",
        ";",
        "%25",
        "%2e%2e%2f",
        "..\\",
        "\x7f",
        "\x01",
    ]
)
raw_paths = st.lists(pieces, max_size=12).map(lambda p: "".join(p).encode("utf-8"))
# Without '%' and control characters nothing in a path is malformed: never rejected.
clean_pieces = st.sampled_from(["a", "b", ".", "..", "/", "//", "\\", "..\\", "~", "é", " ", ";"])
clean_paths = st.lists(clean_pieces, max_size=12).map(lambda p: "".join(p).encode("utf-8"))
modes = st.sampled_from([m for m in PathNormalization if m is not PathNormalization.NONE])


def normalized_or_none(path: bytes, mode: PathNormalization) -> str | None:
    """The normalized path, or None when it is rejected, which only an escape
    or a control character can cause: a normalizer that rejected everything
    would fail here instead of passing every property below."""
    try:
        return normalize_path(path, mode)
    except MalformedRequestError:
        assert b"%" in path or any(b < 0x20 or b == 0x7F for b in path), path
        return None


@given(clean_paths, modes)
def test_paths_without_escapes_or_control_characters_are_never_rejected(
    raw: bytes, mode: PathNormalization
) -> None:
    out = normalize_path(b"/" + raw, mode)
    assert out.startswith("/")


@given(raw_paths, modes)
def test_normalization_is_idempotent(raw: bytes, mode: PathNormalization) -> None:
    once = normalized_or_none(b"/" + raw, mode)
    if once is None:
        return
    assert normalize_path(once.encode("ascii"), mode) == once


@given(raw_paths, modes)
def test_no_dot_dot_segment_survives(raw: bytes, mode: PathNormalization) -> None:
    out = normalized_or_none(b"/" + raw, mode)
    if out is None:
        return
    segments = out.split("/")
    assert ".." not in segments and "." not in segments, out
    assert out.startswith("/")


@given(raw_paths, modes)
def test_a_normalized_path_under_a_prefix_stays_under_it_or_is_rejected(
    raw: bytes, mode: PathNormalization
) -> None:
    """`/a/` + x normalizes to something under `/a/`, unless x climbs out with
    `..` (which normalization resolves, so the result is then not under /a/
    and policy sees the real target) — what must never happen is a result
    that *looks* under /a/ but reaches elsewhere once the app decodes it."""
    from proxyless_mesh.policy._normalize import app_path

    out = normalized_or_none(b"/a/" + raw, mode)
    if out is None:
        return
    decoded = app_path(out).decode("utf-8", "replace")
    # What the app sees resolves to the same place as what the policy saw.
    assert ".." not in decoded.split("/"), (out, decoded)
    if out.startswith("/a/"):
        assert decoded.startswith("/a/"), (out, decoded)
