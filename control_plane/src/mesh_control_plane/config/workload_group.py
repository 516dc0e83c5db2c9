"""The WorkloadGroup template as the control plane holds it (config/model.py's
neighbour: the registry and the loader both read it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .model import Meta
from .probe import Probe


@dataclass(frozen=True)
class WorkloadGroup:
    """The template self-registering workloads are stamped from.

    Not translated: the embedded registry (registry/embedded.py) admits members
    into it, and they reach xDS as endpoints of the ServiceEntries that select
    them. Flat fields (not a `Meta`) because the registry builds groups from
    `--workload-groups-dir` too; `meta` gives the loader's view.
    """

    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)  # spec.metadata.labels
    service_account: str = ""
    ports: Mapping[str, int] = field(default_factory=dict)
    template_labels: Mapping[str, str] = field(default_factory=dict)
    network: str = ""
    locality: str = ""
    weight: int = 1
    probe: Probe | None = None
    file: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def meta(self) -> Meta:
        return Meta(kind="WorkloadGroup", name=self.name, namespace=self.namespace, file=self.file)

    def member_labels(self, own: Mapping[str, str]) -> dict[str, str]:
        """A member's labels: the group's, then the template's, then its own."""
        return {**self.labels, **self.template_labels, **own}
