"""Hypothesis strategies for valid Istio configurations: ServiceEntries with
labelled endpoints, DestinationRules with subsets, VirtualServices with
matches and weighted routes to those subsets. Built as plain documents (what
an operator writes), so the loader validates them before the translator
sees them."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

API = "networking.istio.io/v1"
VERSIONS = ("v1", "v2", "v3")
_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=6)
_path = st.lists(_segment, min_size=0, max_size=3).map(lambda s: "/" + "/".join(s))
_regex = st.sampled_from(["/api/.*", "/v[0-9]+/items", "[a-z/]+", "/(a|b)/c", ".*"])


def _string_match(values: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, str]]:
    return st.one_of(
        values.map(lambda v: {"exact": v}),
        values.map(lambda v: {"prefix": v}),
        _regex.map(lambda v: {"regex": v}),
    )


@st.composite
def _match(draw: st.DrawFn) -> dict[str, Any]:
    m: dict[str, Any] = {}
    if draw(st.booleans()):
        m["uri"] = draw(_string_match(_path))
    if draw(st.booleans()):
        m["headers"] = draw(
            st.dictionaries(
                st.sampled_from(["x-user", "x-canary", "end-user"]),
                _string_match(_token),
                max_size=2,
            )
        )
    return m


def _weights(n: int) -> st.SearchStrategy[list[int]]:
    """n weights summing to 100 (Istio requires it when there is more than one)."""
    if n == 1:
        return st.just([100])
    return st.lists(st.integers(0, 100), min_size=n - 1, max_size=n - 1).map(
        lambda cuts: [b - a for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), 100], strict=True)]
    )


@st.composite
def mesh_documents(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A list of documents forming one valid mesh configuration."""
    docs: list[dict[str, Any]] = []
    n_services = draw(st.integers(1, 3))
    hosts = [f"svc{i}.default.mesh" for i in range(n_services)]
    subsets_of: dict[str, list[str]] = {}
    for i, host in enumerate(hosts):
        versions = draw(st.lists(st.sampled_from(VERSIONS), min_size=1, max_size=3, unique=True))
        endpoints = [
            {
                "address": f"10.{i}.{j}.{k}",
                "ports": {"http": draw(st.integers(1024, 65535))},
                "labels": {"version": v},
            }
            for j, v in enumerate(versions)
            for k in range(1, draw(st.integers(1, 3)) + 1)
        ]
        port = draw(st.integers(1, 65535))
        docs.append(
            {
                "apiVersion": API,
                "kind": "ServiceEntry",
                "metadata": {"name": f"svc{i}", "namespace": "default"},
                "spec": {
                    "hosts": [host],
                    "ports": [{"number": port, "name": "http", "protocol": "HTTP"}],
                    "resolution": "STATIC",
                    "location": "MESH_INTERNAL",
                    "endpoints": endpoints,
                },
            }
        )
        if draw(st.booleans()):
            subsets = draw(st.lists(st.sampled_from(versions), min_size=1, unique=True))
            subsets_of[host] = subsets
            rule: dict[str, Any] = {
                "host": host,
                "subsets": [{"name": s, "labels": {"version": s}} for s in subsets],
            }
            if draw(st.booleans()):
                lb = draw(st.sampled_from(["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"]))
                rule["trafficPolicy"] = {"loadBalancer": {"simple": lb}}
            docs.append(
                {
                    "apiVersion": API,
                    "kind": "DestinationRule",
                    "metadata": {"name": f"svc{i}", "namespace": "default"},
                    "spec": rule,
                }
            )
    for i, host in enumerate(hosts):
        if not draw(st.booleans()):
            continue
        http = []
        for _ in range(draw(st.integers(1, 3))):
            target = draw(st.sampled_from(hosts))
            choices = [None, *subsets_of.get(target, [])]
            picked = draw(st.lists(st.sampled_from(choices), min_size=1, max_size=3, unique=True))
            weights = draw(_weights(len(picked)))
            route = []
            for subset, weight in zip(picked, weights, strict=True):
                dest: dict[str, Any] = {"host": target}
                if subset is not None:
                    dest["subset"] = subset
                entry: dict[str, Any] = {"destination": dest}
                if len(picked) > 1:
                    entry["weight"] = weight
                route.append(entry)
            item: dict[str, Any] = {"route": route}
            matches = draw(st.lists(_match(), max_size=2))
            if any(matches):
                item["match"] = [m for m in matches if m] or [{}]
            http.append(item)
        docs.append(
            {
                "apiVersion": API,
                "kind": "VirtualService",
                "metadata": {"name": f"vs{i}", "namespace": "default"},
                "spec": {"hosts": [host], "http": http},
            }
        )
    return docs
