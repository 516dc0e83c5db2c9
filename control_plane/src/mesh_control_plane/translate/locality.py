"""localityLbSetting: per-client priorities and weights, as Istio computes them.

EDS stays one priority (today's behaviour) unless the cluster's policy has a
``localityLbSetting`` that is enabled. Then, from the asking client's locality
(``node.locality``) and labels:

- ``distribute``: the first entry whose ``from`` matches the client sets
  locality weights; localities matched by no ``to`` key get no traffic
  (Istio removes their endpoints). A ``to`` pattern matching several
  localities shares its weight among them in proportion to their own weight.
- failover (Istio's rule, copied: only when the cluster also has
  outlierDetection, since without ejection nothing would ever look unhealthy
  enough to fail over): priority 0 = same region/zone/subzone, 1 = same
  region and zone, 2 = same region, 3 = another region; with a ``failover``
  entry for the client's region, only its ``to`` region keeps 3 and the rest
  become 4.
- ``failoverPriority``: labels, most important first; an endpoint matching
  the client on all N labels gets priority 0, one first differing at label i
  gets N - i. The labels topology.kubernetes.io/region, .../zone and
  topology.istio.io/subzone mean the locality parts.

Priorities are then renumbered 0..K-1 without gaps (gRPC NACKs gaps).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mesh_control_plane.config.model import LocalityLbSetting, WorkloadEndpoint

Locality = tuple[str, str, str]
Member = tuple[WorkloadEndpoint, Locality]

REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
SUBZONE_LABEL = "topology.istio.io/subzone"
_LOCALITY_LABELS = {REGION_LABEL: 0, ZONE_LABEL: 1, SUBZONE_LABEL: 2}


def locality_match(locality: Locality, pattern: str) -> bool:
    """Istio's LocalityMatch: "region/zone/subzone" where "*" or a missing part matches any."""
    parts = pattern.split("/")
    region = parts[0]
    zone = parts[1] if len(parts) > 1 else ""
    subzone = parts[2] if len(parts) > 2 else ""
    return (
        (region == "*" or region == locality[0])
        and (zone in ("*", "") or zone == locality[1])
        and (subzone in ("*", "") or subzone == locality[2])
    )


def distribute_weights(
    setting: LocalityLbSetting, client: Locality, weights: Mapping[Locality, int]
) -> dict[Locality, int] | None:
    """New weight per locality from the first matching `distribute` entry (localities
    absent from the result get nothing); None when no entry applies to this client."""
    for rule in setting.distribute:
        if not locality_match(client, rule.from_):
            continue
        unmatched = set(weights)
        result: dict[Locality, int] = {}
        for pattern, weight in rule.to.items():
            chosen = sorted(loc for loc in unmatched if locality_match(loc, pattern))
            unmatched.difference_update(chosen)
            total = sum(weights[loc] for loc in chosen)
            for loc in chosen:
                share = weights[loc] * weight / total if total else 0
                if share > 0:
                    result[loc] = math.ceil(share)
        return result
    return None


def failover_priority(setting: LocalityLbSetting, client: Locality, endpoint: Locality) -> int:
    """Istio's locality priority of `endpoint` as seen from `client` (before renumbering)."""
    if client == endpoint:
        return 0
    if client[:2] == endpoint[:2]:
        return 1
    if client[0] == endpoint[0]:
        return 2
    for rule in setting.failover:
        if rule.from_ == client[0]:
            return 3 if endpoint[0] == rule.to_region else 4
    return 3


def label_priority(
    labels: tuple[str, ...],
    client_labels: Mapping[str, str],
    client: Locality,
    member: Member,
) -> int:
    """Priority by `failoverPriority` labels: 0 when all match, N - i at the first mismatch."""
    instance, locality = member
    for i, label in enumerate(labels):
        if label in _LOCALITY_LABELS:
            part = _LOCALITY_LABELS[label]
            mine, theirs = client[part], locality[part]
        else:
            mine, theirs = client_labels.get(label, ""), instance.labels.get(label, "")
        if not mine or mine != theirs:
            return len(labels) - i
    return 0


def compact(priorities: Mapping[object, int]) -> dict[object, int]:
    """Renumber priorities to 0..K-1 keeping their order."""
    ranks = {p: i for i, p in enumerate(sorted(set(priorities.values())))}
    return {key: ranks[p] for key, p in priorities.items()}
