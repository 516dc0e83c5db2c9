"""VirtualService delegation: a root's `http[].delegate` replaced by the
delegate's routes, merged as istiod merges them (matches narrowed within the
root's, unset fields from the root, conflicting routes and missing delegates
left out with a warning)."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from mesh_control_plane.config import ConfigLoadError, MeshConfig, parse_documents
from mesh_control_plane.config.model import StringMatch

SERVICES = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc, namespace: shop}
spec:
  resolution: STATIC
  location: MESH_INTERNAL
  hosts: [front.mesh, cart.mesh, pay.mesh]
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.1}]
"""

ROOT = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: shop}
spec:
  hosts: [front.mesh]
  http:
  - name: cart
    match: [{uri: {prefix: /cart}}]
    timeout: 3s
    delegate: {name: cart-routes, namespace: team-cart}
  - route: [{destination: {host: front.mesh}}]
"""

DELEGATE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart-routes, namespace: team-cart}
spec:
  http:
  - name: pay
    match: [{uri: {prefix: /cart/pay}, headers: {x-user: {exact: a}}}]
    timeout: 1s
    route: [{destination: {host: pay.mesh}}]
  - name: outside
    match: [{uri: {prefix: /admin}}]
    route: [{destination: {host: pay.mesh}}]
  - route: [{destination: {host: cart.mesh}}]
"""


def load(*texts: str) -> MeshConfig:
    docs = [("x.yaml", d) for text in texts for d in yaml.safe_load_all(textwrap.dedent(text))]
    return parse_documents(docs)


def test_delegate_routes_take_the_root_routes_place() -> None:
    config = load(SERVICES, ROOT, DELEGATE)
    (front,) = config.virtual_services  # the delegate itself is merged away
    pay, cart, default = front.http
    assert pay.name == "cart-pay"
    assert pay.match[0].uri == StringMatch("prefix", "/cart/pay")
    assert dict(pay.match[0].headers) == {"x-user": StringMatch("exact", "a")}
    assert pay.timeout == 1.0  # the delegate's own
    assert [d.destination.host for d in pay.route] == ["pay.mesh"]
    # A delegate route without a match takes the root's match and the root's timeout.
    assert cart.match[0].uri == StringMatch("prefix", "/cart")
    assert cart.timeout == 3.0
    assert [d.destination.host for d in cart.route] == ["cart.mesh"]
    assert [d.destination.host for d in default.route] == ["front.mesh"]
    # /admin is not within /cart: istiod drops that route, and says so.
    (warning,) = config.warnings
    assert warning.resource == "VirtualService shop/front"
    assert warning.field == "spec.http[0].delegate"
    assert "route http[1] of delegate VirtualService team-cart/cart-routes" in warning.message


def test_a_missing_delegate_leaves_the_route_out_with_a_warning() -> None:
    config = load(SERVICES, ROOT)
    (front,) = config.virtual_services
    assert [r.route[0].destination.host for r in front.http] == ["front.mesh"]
    (warning,) = config.warnings
    assert warning.code == "IST0101"
    assert "no delegate VirtualService team-cart/cart-routes" in warning.message


def test_a_delegate_not_exported_to_the_roots_namespace_is_missing() -> None:
    hidden = DELEGATE.replace("spec:\n", 'spec:\n  exportTo: ["."]\n', 1)
    config = load(SERVICES, ROOT, hidden)
    (front,) = config.virtual_services
    assert [r.route[0].destination.host for r in front.http] == ["front.mesh"]
    assert "exported to shop" in config.warnings[0].message
    shared = DELEGATE.replace("spec:\n", "spec:\n  exportTo: [shop]\n", 1)
    assert len(load(SERVICES, ROOT, shared).virtual_services[0].http) == 3


def test_an_unused_delegate_is_reported() -> None:
    config = load(SERVICES, DELEGATE)
    (warning,) = config.warnings
    assert (warning.resource, warning.field) == (
        "VirtualService team-cart/cart-routes",
        "spec.hosts",
    )
    assert "no VirtualService delegates to it" in warning.message


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (
            (ROOT.replace("timeout: 3s", "route: [{destination: {host: cart.mesh}}]"), DELEGATE),
            "spec.http[0].route: cannot be used together with delegate",
        ),
        (
            (
                ROOT,
                DELEGATE.replace(
                    "route: [{destination: {host: cart.mesh}}]", "delegate: {name: deeper}"
                ),
            ),
            "spec.http[2].delegate: a delegate VirtualService cannot delegate",
        ),
        (
            (ROOT, DELEGATE.replace("spec:\n", "spec:\n  gateways: [mesh]\n")),
            "spec.gateways: a delegate VirtualService (no hosts) must not name gateways",
        ),
    ],
)
def test_delegation_mistakes_are_named(texts: tuple[str, str], expected: str) -> None:
    with pytest.raises(ConfigLoadError) as caught:
        load(SERVICES, *texts)
    assert expected in [f"{p.field}: {p.message}" for p in caught.value.problems]
