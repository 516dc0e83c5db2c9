"""The translator's output: xDS resources by type and name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import Message

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

TYPE_URLS = (LISTENER, ROUTE, CLUSTER, ENDPOINT)
"""The four types, in the order a client needs them resolved (LDS -> RDS -> CDS -> EDS)."""


@dataclass(frozen=True)
class ResourceSet:
    """Everything one client kind is sent, as protobuf messages.

    ``resources`` maps each of the four type URLs (always present, possibly empty)
    to resource name -> message, names in sorted order. Treat the messages as
    read-only: the server serializes them once and shares them between streams.
    """

    resources: Mapping[str, Mapping[str, Message]]
    # (host, subset) pairs routes name although no DestinationRule defines them
    # (yet): their clusters are absent on purpose, as in Istio (Envoy: 503 NC).
    undefined_subsets: frozenset[tuple[str, str]] = frozenset()
