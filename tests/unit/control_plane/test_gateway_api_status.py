"""Gateway API status conditions: Programmed from the gateway Envoys' live
ACKs (the `/status` form of each ADS client), and a route's Accepted per
parent."""

from __future__ import annotations

from typing import Any

from mesh_control_plane.cli.gateway_status import conditions, programmed_gateways

from .yaml_docs import load

WEB = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.2}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: shop}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{name: web}, {name: gone}]
  rules: [{backendRefs: [{name: ratings, port: 8080}]}]
"""
NODE = "router~127.0.0.1~web.shop~shop.svc.cluster.local"


def _client(node_id: str, **types: dict[str, Any]) -> dict[str, Any]:
    return {"node_id": node_id, "types": types}


def _programmed(*clients: dict[str, Any]) -> str:
    found = conditions(load(WEB), programmed_gateways(clients))
    (condition,) = [c for c in found if c.type == "Programmed"]
    return str(condition)


def test_route_conditions_per_parent() -> None:
    acked = programmed_gateways([_client(NODE, LDS={"sent": "v1", "acked": "v1"})])
    assert [str(c) for c in conditions(load(WEB), acked)] == [
        "Gateway shop/web: Accepted=True (Accepted)",
        "Gateway shop/web: Programmed=True (Programmed): "
        "its Envoy ACKed the current listeners and routes",
        "HTTPRoute shop/r parent shop/web: Accepted=True (Accepted)",
        "HTTPRoute shop/r parent shop/web: ResolvedRefs=True (ResolvedRefs)",
        "HTTPRoute shop/r parent shop/gone: Accepted=False (NoMatchingParent)",
        "HTTPRoute shop/r parent shop/gone: ResolvedRefs=True (ResolvedRefs)",
    ]
    assert "Programmed=Unknown (Pending)" in str(conditions(load(WEB), None)[1])


def test_programmed_follows_the_current_version_acked() -> None:
    lds = {"sent": "v2", "acked": "v2"}
    # Another gateway's Envoy, or a library client, programs nothing here.
    other = _client("router~127.0.0.1~other.shop~x", LDS=lds)
    assert "(NoResources)" in _programmed(other, _client("sidecar~1~web.shop~x", LDS=lds))
    assert "Programmed=True (Programmed)" in _programmed(_client(NODE, LDS=lds))
    # Routes too, when the Envoy asked for route tables.
    rds = {"sent": "v2", "acked": "v1"}
    assert "Programmed=False (Pending): its Envoy has not ACKed RDS v2 yet" in _programmed(
        _client(NODE, LDS=lds, RDS=rds)
    )
    # A version sent but not ACKed yet (the previous one was).
    assert "(Pending)" in _programmed(_client(NODE, LDS={"sent": "v3", "acked": "v2"}))
    assert "(Pending)" in _programmed(_client(NODE))
    # A NACK of the latest response (over SotW it carries the version last
    # accepted; the control plane clears it at the next ACK).
    nacked = {"sent": "v3", "acked": "v2", "nacked": "v2", "error": "bad listener"}
    assert "Programmed=False (Invalid): its Envoy rejected LDS v3: bad listener" in _programmed(
        _client(NODE, LDS=nacked)
    )
    never = {"sent": "v1", "acked": "", "nacked": "", "error": "cannot bind"}
    assert "(Invalid): its Envoy rejected LDS v1: cannot bind" in _programmed(
        _client(NODE, LDS=never)
    )
    # Two Envoys for one Gateway: the worse verdict.
    both = (_client(NODE, LDS=lds), _client(NODE.replace("127.0.0.1", "10.0.0.9"), LDS=nacked))
    assert "(Invalid)" in _programmed(*both)
    assert "(Invalid)" in _programmed(*reversed(both))
