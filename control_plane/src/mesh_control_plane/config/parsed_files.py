"""What each config file last parsed to, so a reload parses only files whose
text changed.

PyYAML's pure-Python parser costs about 2 ms per small file: with 1,000
services (a file each) every change re-read the whole directory for ~2.5 s
of CPU before anything was pushed, ~25 s at 10,000 (benchmarks/README.md).
Files are still read on every load and compared by a digest of their text, so
a change is never missed (no trust in modification times). Results are kept
pickled: every load gets objects of its own, whatever the validation does to
them, and a pickle is smaller than the parsed objects.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .documents import Document
from .errors import ConfigProblem

__all__ = ["ParsedFiles"]

Parse = Callable[[str], tuple[list[Document], list[ConfigProblem]]]


@dataclass(frozen=True, slots=True)
class _Parsed:
    digest: bytes
    documents: bytes  # pickled list[Document]
    problems: tuple[ConfigProblem, ...]


class ParsedFiles:
    """Parse results by path, for one config directory's watcher. Used from
    one reload at a time; a concurrent one at worst parses a file twice."""

    def __init__(self) -> None:
        self._by_path: dict[Path, _Parsed] = {}

    def parse(
        self, path: Path, text: str, parse: Parse
    ) -> tuple[list[Document], list[ConfigProblem]]:
        """`parse(text)`, or what it gave for the same text of `path` before."""
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        parsed = self._by_path.get(path)
        if parsed is None or parsed.digest != digest:
            documents, problems = parse(text)
            pickled = pickle.dumps(documents, protocol=pickle.HIGHEST_PROTOCOL)
            parsed = self._by_path[path] = _Parsed(digest, pickled, tuple(problems))
        # our own pickle of what the YAML parser made: plain data, trusted
        fresh: list[Document] = pickle.loads(parsed.documents)
        return fresh, list(parsed.problems)

    def keep_only(self, paths: Iterable[Path]) -> None:
        """Forget files that are gone."""
        wanted = set(paths)
        for path in [p for p in list(self._by_path) if p not in wanted]:  # list(): one step
            self._by_path.pop(path, None)
