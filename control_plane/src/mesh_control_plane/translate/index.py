"""The config, looked up by host: what every part of the translator needs to ask.

Built once per translate() call. Where Istio would merge or pick among several
resources for one host, we pick the first in config order (the loader sorts by
namespace, then name), as Istio's sidecars do for VirtualServices; the loader is
expected to reject real conflicts with a clear message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mesh_control_plane.config.model import (
    DestinationRule,
    MeshConfig,
    ServicePort,
    VirtualService,
)

HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC"})
"""Port protocols routed at layer 7 (they get listeners and routes)."""

H2_PROTOCOLS = frozenset({"HTTP2", "GRPC"})
"""Port protocols whose upstream connections must speak HTTP/2."""


@dataclass(frozen=True)
class Service:
    """One host of a ServiceEntry with its ports, sorted by number."""

    host: str
    ports: tuple[ServicePort, ...]
    namespace: str = "default"  # the declaring ServiceEntry's (its instances' identities)
    location: str = "MESH_INTERNAL"
    addresses: tuple[str, ...] = ()  # virtual IPs that name it too (ServiceEntry `addresses`)

    def port(self, number: int) -> ServicePort | None:
        for port in self.ports:
            if port.number == number:
                return port
        return None

    @property
    def http_ports(self) -> tuple[ServicePort, ...]:
        return tuple(port for port in self.ports if port.protocol in HTTP_PROTOCOLS)


@dataclass(frozen=True)
class MeshIndex:
    """host -> service, destination rule and virtual service; hosts sorted."""

    services: Mapping[str, Service]
    destination_rules: Mapping[str, DestinationRule]
    virtual_services: Mapping[str, VirtualService]

    @classmethod
    def build(cls, config: MeshConfig) -> MeshIndex:
        ports_by_host: dict[str, dict[int, ServicePort]] = {}
        owner: dict[str, tuple[str, str, tuple[str, ...]]] = {}
        for entry in config.service_entries:
            for host in entry.hosts:
                known = ports_by_host.setdefault(host, {})
                owner.setdefault(host, (entry.meta.namespace, entry.location, entry.addresses))
                for port in entry.ports:
                    known.setdefault(port.number, port)
        services = {
            host: Service(host, tuple(ports[n] for n in sorted(ports)), *owner[host])
            for host, ports in sorted(ports_by_host.items())
        }
        rules: dict[str, DestinationRule] = {}
        for rule in config.destination_rules:
            rules.setdefault(rule.host, rule)
        virtual_services: dict[str, VirtualService] = {}
        for vs in config.virtual_services:
            for host in vs.hosts if vs.for_mesh else ():  # gateway-only: not the mesh's
                virtual_services.setdefault(host, vs)
        return cls(services, rules, virtual_services)
