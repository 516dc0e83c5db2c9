"""No source file of the library or the control plane is over 500 lines (the
style rule: a file holds one idea a reader can take in; split by idea)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 500


def test_no_source_file_is_over_500_lines() -> None:
    files = sorted((ROOT / "src").rglob("*.py")) + sorted(
        (ROOT / "control_plane" / "src").rglob("*.py")
    )
    assert len(files) > 100  # the trees were found
    sizes = {f.relative_to(ROOT).as_posix(): len(f.read_text().splitlines()) for f in files}
    assert max(sizes.values()) > 300  # lines were counted
    assert {f: n for f, n in sizes.items() if n > LIMIT} == {}
