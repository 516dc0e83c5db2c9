"""Errors of the configuration loader.

Every problem found in a configuration directory is a `ConfigProblem`, and a
failed load raises one `ConfigLoadError` holding all of them: an operator who
fixes one typo should not have to run the loader again to learn of the next.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ConfigError", "ConfigLoadError", "ConfigProblem"]


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the configuration, located as precisely as known.

    `str()` gives the line an operator reads, e.g.
    ``bad.yaml: VirtualService default/bad: spec.http[0].frobnicate: unknown field``,
    ending in Istio's analyzer code when there is one: `... (IST0101)`.
    Parts that are unknown (resource, field, line) are left out of it.
    """

    file: str  # path relative to the config directory ("" when not about one file)
    resource: str  # "<Kind> <namespace>/<name>", or "" when unknown
    field: str  # dotted/indexed path such as "spec.http[0].route", or ""
    message: str
    line: int | None = None  # 1-based; only set when no resource/field can say where
    # Istio's analyzer code where one exists (istioctl analyze's IST0101 ...), so the
    # message can be looked up in Istio's documentation.
    code: str = ""

    def __str__(self) -> str:
        parts = [self.file] if self.file else []
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.resource:
            parts.append(self.resource)
        if self.field:
            parts.append(self.field)
        parts.append(f"{self.message} ({self.code})" if self.code else self.message)
        return ": ".join(parts)


class ConfigError(Exception):
    """Base of every error raised by the configuration package."""


class ConfigLoadError(ConfigError):
    """The configuration could not be loaded; `problems` lists all that was found."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        count = len(self.problems)
        header = f"invalid mesh configuration ({count} problem{'s' if count != 1 else ''})"
        super().__init__("\n".join([header, *(f"  {p}" for p in self.problems)]))
