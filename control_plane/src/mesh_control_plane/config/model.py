"""Typed, validated Istio configuration as the control plane holds it.

The loader (config/loader.py) turns YAML into these objects after strict
validation; the translator reads only these. Field names follow Istio's
networking.istio.io/v1 API, in snake_case.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Meta:
    """Where a resource came from, for error messages and status."""

    kind: str
    name: str
    namespace: str
    file: str  # path relative to the config directory

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServicePort:
    number: int
    protocol: str  # HTTP | HTTP2 | GRPC | TCP (upper-cased)
    name: str
    target_port: int | None = None


@dataclass(frozen=True)
class WorkloadEndpoint:
    """One instance: a ServiceEntry endpoint or a WorkloadEntry spec."""

    address: str
    ports: Mapping[str, int] = field(default_factory=dict)  # port name -> port
    labels: Mapping[str, str] = field(default_factory=dict)
    locality: str = ""  # "region/zone/subzone", any part may be empty
    weight: int = 1
    network: str = ""
    service_account: str = ""


@dataclass(frozen=True)
class ServiceEntry:
    meta: Meta
    hosts: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    resolution: str = "STATIC"  # only STATIC for now
    location: str = "MESH_INTERNAL"
    endpoints: tuple[WorkloadEndpoint, ...] = ()
    workload_selector: Mapping[str, str] | None = None  # labels of WorkloadEntries


@dataclass(frozen=True)
class WorkloadEntry:
    meta: Meta
    endpoint: WorkloadEndpoint


@dataclass(frozen=True)
class LoadBalancerSettings:
    simple: str | None = None  # ROUND_ROBIN | LEAST_REQUEST | RANDOM | PASSTHROUGH


@dataclass(frozen=True)
class TrafficPolicy:
    load_balancer: LoadBalancerSettings | None = None


@dataclass(frozen=True)
class Subset:
    name: str
    labels: Mapping[str, str]
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True)
class DestinationRule:
    meta: Meta
    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()


@dataclass(frozen=True)
class StringMatch:
    """Istio StringMatch: exactly one of exact / prefix / regex."""

    kind: str  # "exact" | "prefix" | "regex"
    value: str


@dataclass(frozen=True)
class HTTPMatchRequest:
    name: str = ""
    uri: StringMatch | None = None
    method: StringMatch | None = None
    headers: Mapping[str, StringMatch] = field(default_factory=dict)  # lower-case names
    ignore_uri_case: bool = False


@dataclass(frozen=True)
class Destination:
    host: str
    subset: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class HTTPRouteDestination:
    destination: Destination
    weight: int = 0  # 0 with a single destination means 100


@dataclass(frozen=True)
class HTTPRoute:
    name: str = ""
    match: tuple[HTTPMatchRequest, ...] = ()
    route: tuple[HTTPRouteDestination, ...] = ()
    timeout: float | None = None  # seconds


@dataclass(frozen=True)
class VirtualService:
    meta: Meta
    hosts: tuple[str, ...]
    http: tuple[HTTPRoute, ...] = ()


@dataclass(frozen=True)
class MeshConfig:
    """Everything loaded from the config directory, in a stable order
    (by namespace, then name) so translation is deterministic."""

    service_entries: tuple[ServiceEntry, ...] = ()
    workload_entries: tuple[WorkloadEntry, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    virtual_services: tuple[VirtualService, ...] = ()
