"""Gateway API references: a backend of another namespace needs a
ReferenceGrant there; an unresolved backend does not refuse the configuration
but sets its route's ResolvedRefs=False, and a rule left with no backend
answers 500."""

from __future__ import annotations

from typing import Any

import pytest
from mesh_control_plane.cli.gateway_status import conditions
from mesh_control_plane.config import ConfigLoadError, MeshConfig
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import ROUTE, ClientKind, NodeInfo, translate

from .yaml_docs import load

SERVICES = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: data}
spec:
  hosts: [ratings.data.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.2}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
"""
ROUTES = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  hostnames: [split.example.com]
  rules:
  - backendRefs:
    - {name: web, port: 8080, weight: 50}
    - {name: ratings, namespace: data, port: 8080, weight: 50}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: lost, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  hostnames: [lost.example.com]
  rules:
  - backendRefs: [{name: nowhere, port: 8080}]
"""
GRANT = """
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: shop-routes, namespace: data}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: "", kind: Service, name: ratings}]
"""
NODE = NodeInfo(
    id="router~x",
    kind=ClientKind.ENVOY,
    labels=(("gateway.networking.k8s.io/gateway-name", "edge"),),
    router=True,
)


def gateway_routes(config: MeshConfig) -> dict[str, list[Any]]:
    """domain -> per route: its clusters with weights, or its direct status."""
    rs = translate(config, build_static_registry(config), NODE)
    table: Any = rs.resources[ROUTE]["http.80"]
    found: dict[str, list[Any]] = {}
    for vhost in table.virtual_hosts:
        for route in vhost.routes:
            if route.HasField("direct_response"):
                found.setdefault(vhost.domains[0], []).append(route.direct_response.status)
            else:
                clusters = route.route.weighted_clusters.clusters
                weighted = [(c.name, c.weight.value) for c in clusters]
                found.setdefault(vhost.domains[0], []).append(weighted or route.route.cluster)
    return found


def resolved(config: MeshConfig) -> list[str]:
    return [str(c) for c in conditions(config, None) if c.type == "ResolvedRefs"]


def test_without_a_grant_the_other_namespace_backend_is_dropped_and_said() -> None:
    config = load(SERVICES, ROUTES)
    assert [str(w) for w in config.warnings] == [
        "gw.yaml: HTTPRoute shop/lost: spec.rules[0].backendRefs[0]: BackendNotFound: no "
        "Service nowhere.shop.svc.cluster.local is declared; the rule answers 500",
        "gw.yaml: HTTPRoute shop/split: spec.rules[0].backendRefs[1]: RefNotPermitted: no "
        "ReferenceGrant in namespace data lets this route use Service ratings; its weight "
        "goes to the rule's other backends (the spec says 500 for that share)",
    ]
    routes = gateway_routes(config)
    assert routes["lost.example.com"] == [500]
    assert routes["split.example.com"] == ["outbound|8080||web.shop.svc.cluster.local"]
    assert resolved(config) == [
        "HTTPRoute shop/lost parent shop/edge: ResolvedRefs=False (BackendNotFound)",
        "HTTPRoute shop/split parent shop/edge: ResolvedRefs=False (RefNotPermitted)",
    ]


def test_a_reference_grant_permits_the_backend() -> None:
    config = load(SERVICES, ROUTES, GRANT)
    assert gateway_routes(config)["split.example.com"] == [
        [
            ("outbound|8080||web.shop.svc.cluster.local", 50),
            ("outbound|8080||ratings.data.svc.cluster.local", 50),
        ]
    ]
    assert "HTTPRoute shop/split parent shop/edge: ResolvedRefs=True (ResolvedRefs)" in resolved(
        config
    )
    # A grant for another Service, or from another kind, permits nothing here.
    for other in ("name: ratings}", "kind: HTTPRoute,"):
        changed = GRANT.replace(other, "name: other}" if "name" in other else "kind: GRPCRoute,")
        assert "RefNotPermitted" in str(load(SERVICES, ROUTES, changed).warnings)


def test_certificates_of_another_namespace_are_refused_by_field() -> None:
    gateway = """
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {name: tls, namespace: shop}
    spec:
      gatewayClassName: istio
      listeners:
      - name: https
        port: 443
        protocol: HTTPS
        tls: {certificateRefs: [{name: cert, namespace: certs}]}
    """
    with pytest.raises(ConfigLoadError) as caught:
        load(gateway)
    assert "spec.listeners[0].tls.certificateRefs[0].namespace: not supported yet" in str(
        caught.value
    )
