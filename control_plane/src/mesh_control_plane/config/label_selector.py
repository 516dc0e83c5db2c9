"""A Kubernetes label selector (matchLabels and matchExpressions), as a
Gateway API listener's `allowedRoutes.namespaces.selector` picks namespaces,
and the Namespaces whose labels it is applied to.

Kubernetes' semantics: every requirement must hold; In needs the label with
one of the values, NotIn its absence or another value, Exists the label, and
DoesNotExist its absence; an empty selector picks every namespace. Every
namespace carries ``kubernetes.io/metadata.name: <name>`` (Kubernetes sets it;
here it is implied for a namespace no Namespace document declares).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .model import Meta
from .schema import (
    Problems,
    check_enum,
    get_list,
    get_str,
    get_str_map,
    index,
    join,
    read_object,
)

NAME_LABEL = "kubernetes.io/metadata.name"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
SELECTOR_FIELDS = ("matchLabels", "matchExpressions")
EXPRESSION_FIELDS = ("key", "operator", "values")
NAMESPACE_FIELDS = ("metadata.name", "metadata.labels")  # spec and status: not read


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # one of OPERATORS
    values: frozenset[str] = frozenset()

    def holds(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        return (self.key in labels) == (self.operator == "Exists")


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.holds(labels) for r in self.requirements)


def parse_label_selector(p: Problems, selector: Mapping[str, Any], where: str) -> LabelSelector:
    found = [
        Requirement(key, "In", frozenset({value}))
        for key, value in get_str_map(p, selector, "matchLabels", where).items()
    ]
    for i, raw in enumerate(get_list(p, selector, "matchExpressions", where)):
        here = index(join(where, "matchExpressions"), i)
        expr = read_object(p, raw, here, EXPRESSION_FIELDS)
        key = get_str(p, expr, "key", here, required=True) or ""
        text = get_str(p, expr, "operator", here, required=True) or ""
        operator = check_enum(p, text, join(here, "operator"), OPERATORS) if text else None
        values = frozenset(str(v) for v in get_list(p, expr, "values", here))
        if operator in ("In", "NotIn") and not values:
            p.add(join(here, "values"), f"must not be empty for {operator}")
        elif operator in ("Exists", "DoesNotExist") and values:
            p.add(join(here, "values"), f"must be empty for {operator}")
        if key and operator:
            found.append(Requirement(key, operator, values))
    return LabelSelector(tuple(found))


@dataclass(frozen=True)
class Namespace:
    """A `v1 Namespace`: only its labels are read (for namespace selectors)."""

    meta: Meta
    labels: Mapping[str, str]


def parse_namespace(p: Problems, meta: Meta, data: Mapping[str, Any]) -> Namespace:
    """`data` is the whole document: a Namespace's labels are in its metadata
    (checked as a string map with the rest of it); its spec and status are not read."""
    read_object(p, data, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    metadata = data.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
    own = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}
    return Namespace(meta, {**own, NAME_LABEL: meta.name})


def namespace_labels(
    declared: Mapping[str, Mapping[str, str]], namespace: str
) -> Mapping[str, str]:
    """The labels of `namespace`: its Namespace's, or the name label alone."""
    return declared.get(namespace) or {NAME_LABEL: namespace}
