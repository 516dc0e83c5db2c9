"""Istio's little value languages: durations, and regexes as RE2 reads them."""

from __future__ import annotations

import re

__all__ = ["not_in_re2", "parse_duration"]

# Go's time.ParseDuration units, which Istio durations use.
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION_UNITS |= {"m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float | None:
    """Seconds in an Istio/Go duration ("1.5s", "300ms", "1h30m"), or None if invalid."""
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            return None
        total += float(match[1]) * _DURATION_UNITS[match[2]]
        pos = match.end()
    return total if text else None


def not_in_re2(pattern: str) -> str | None:
    """The Python-only regex feature `pattern` uses, if any.

    Clients match with RE2, which omits what needs backtracking; a pattern
    using it would be rejected by every client rather than here.
    """
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            if pattern[i + 1 : i + 2] in tuple("123456789"):
                return "backreferences"
            i += 2
            continue
        if pattern[i] == "[":
            i = _skip_class(pattern, i)
            continue
        if pattern.startswith(("(?=", "(?!", "(?<=", "(?<!"), i):
            return "lookaround assertions"
        if pattern.startswith("(?P=", i):
            return "backreferences"
        if pattern.startswith("(?>", i) or pattern.startswith(("*+", "++", "?+", "}+"), i):
            return "atomic groups or possessive quantifiers"
        i += 1
    return None


def _skip_class(pattern: str, start: int) -> int:
    """The index just after the character class opening at `start`."""
    i = start + 1
    if pattern.startswith("^", i):
        i += 1
    if pattern.startswith("]", i):  # a leading "]" is a literal
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1
