"""The four xDS resource types the client follows, and their type URLs."""

from __future__ import annotations

import enum

_PREFIX = "type.googleapis.com/"


class ResourceType(enum.Enum):
    """A resource type, valued by its v3 type URL. Declared in dependency order
    (LDS -> RDS -> CDS -> EDS), which is also the order subscriptions are sent."""

    LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
    ROUTE_CONFIGURATION = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
    CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
    CLUSTER_LOAD_ASSIGNMENT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"

    @property
    def type_url(self) -> str:
        return self.value

    @property
    def short_name(self) -> str:
        """LDS/RDS/CDS/EDS, for logs."""
        return _SHORT[self]

    @property
    def is_full_state(self) -> bool:
        """In State of the World, LDS and CDS responses carry every subscribed
        resource, so a name missing from one means the resource does not exist."""
        return self in (ResourceType.LISTENER, ResourceType.CLUSTER)

    @classmethod
    def from_type_url(cls, type_url: str) -> ResourceType | None:
        try:
            return cls(type_url)
        except ValueError:
            return None


_SHORT = {
    ResourceType.LISTENER: "LDS",
    ResourceType.ROUTE_CONFIGURATION: "RDS",
    ResourceType.CLUSTER: "CDS",
    ResourceType.CLUSTER_LOAD_ASSIGNMENT: "EDS",
}

HCM_TYPE_URL = (
    _PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE_URL = _PREFIX + "envoy.extensions.filters.http.router.v3.Router"
RESOURCE_WRAPPER_TYPE_URL = _PREFIX + "envoy.service.discovery.v3.Resource"
