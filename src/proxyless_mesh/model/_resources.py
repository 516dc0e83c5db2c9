"""Frozen dataclasses mirroring the parts of LDS/RDS/CDS/EDS the mesh uses.

Field meanings follow Envoy's v3 API; only what the mesh implements is here.
A field that is absent in the protobuf takes the Envoy default.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class HealthStatus(enum.IntEnum):
    """Endpoint health as EDS reports it (same numbers as envoy.config.core.v3)."""

    UNKNOWN = 0
    HEALTHY = 1
    UNHEALTHY = 2
    DRAINING = 3
    TIMEOUT = 4
    DEGRADED = 5


class LbPolicy(enum.Enum):
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RANDOM = "RANDOM"
    RING_HASH = "RING_HASH"
    MAGLEV = "MAGLEV"


class MatchKind(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    CONTAINS = "contains"
    REGEX = "regex"  # RE2 syntax on the wire; matched as a full match
    PRESENT = "present"


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    sub_zone: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int
    weight: int = 1
    health: HealthStatus = HealthStatus.UNKNOWN


@dataclass(frozen=True, slots=True)
class LocalityEndpoints:
    locality: Locality
    endpoints: tuple[Endpoint, ...]
    weight: int = 1
    priority: int = 0


@dataclass(frozen=True, slots=True)
class ClusterLoadAssignment:
    cluster_name: str
    localities: tuple[LocalityEndpoints, ...]


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    eds_service_name: str  # the ClusterLoadAssignment to watch (the cluster name when unset)
    lb_policy: LbPolicy = LbPolicy.ROUND_ROBIN


@dataclass(frozen=True, slots=True)
class StringMatcher:
    kind: MatchKind
    value: str = ""
    ignore_case: bool = False


@dataclass(frozen=True, slots=True)
class HeaderMatcher:
    """A header condition. Names are lower-case; `:method`, `:authority`,
    `:path` and `:scheme` are the pseudo-headers, as in Envoy."""

    name: str
    matcher: StringMatcher
    invert: bool = False


@dataclass(frozen=True, slots=True)
class PathMatcher:
    """Envoy's RouteMatch path specifier: PREFIX (`prefix`), EXACT (`path`) or
    REGEX (`safe_regex`), against the path without the query string."""

    kind: MatchKind
    value: str
    case_sensitive: bool = True


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path: PathMatcher
    headers: tuple[HeaderMatcher, ...] = ()


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    name: str
    weight: int


@dataclass(frozen=True, slots=True)
class RouteAction:
    """Where a matched request goes: one cluster (a single WeightedCluster) or
    a weighted split. `timeout` is in seconds; None means no route timeout."""

    clusters: tuple[WeightedCluster, ...]
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: RouteMatch
    action: RouteAction | None  # None: a non-forwarding action the mesh does not serve


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class RouteConfiguration:
    name: str
    virtual_hosts: tuple[VirtualHost, ...]


@dataclass(frozen=True, slots=True)
class Listener:
    """A client-side (api_listener) Listener: where its routes come from."""

    name: str
    rds_name: str | None = None
    inline_routes: RouteConfiguration | None = None
