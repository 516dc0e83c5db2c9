"""Durations as operators write them on the command line: 24h, 30m, 20s, 1h30m, 7d."""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_PART = re.compile(r"(\d+(?:\.\d+)?)(d|h|m|s)")
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in `text` ("24h", "1h30m", "20s", or a bare number of seconds);
    ValueError for anything else or for a duration that is not positive."""
    text = text.strip()
    try:
        return _positive(float(text), text)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ValueError(
                f"expected a duration like 24h, 30m, 20s or 1h30m, got {text!r}"
            ) from None
    return _positive(seconds, text)


def _positive(seconds: float, text: str) -> float:
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The inverse for messages: 86400 -> "24h", 90 -> "1m30s"."""
    rest, parts = int(seconds), list[str]()
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size or (unit == "s" and not parts):
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)
