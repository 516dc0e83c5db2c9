"""The Sidecar resource: which Sidecar applies to a workload (selector, then
its namespace's default, then the root namespace's) and what its egress hosts
let the control plane translate for it, as Istio's SidecarScope decides."""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2
from mesh_control_plane.config import ConfigLoadError
from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import LISTENER, ROUTE, ClientKind, NodeInfo, translate

from proxyless_mesh.model import OUTBOUND_POLICY_LISTENER, Listener
from proxyless_mesh.xds_client import decode_listener

from .test_config_policies import load, problems


def _service(name: str, namespace: str, host: str, export: str = "") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  resolution: STATIC
  location: MESH_INTERNAL
  hosts: [{host}]
  ports: [{{number: 80, name: http}}]
  endpoints: [{{address: 10.0.0.1}}]
{export}"""


SERVICES = "---".join(
    [
        _service("orders", "shop", "orders.shop.svc.cluster.local"),
        _service("cart", "shop", "cart.shop.svc.cluster.local"),
        _service("ledger", "finance", "ledger.finance.svc.cluster.local"),
        _service("audit", "finance", "audit.finance.svc.cluster.local"),
        _service("api", "external", "api.example.com"),
        _service("mirror", "external", "mirror.example.com"),
    ]
)


def _sidecar(name: str, namespace: str, hosts: str, selector: str = "") -> str:
    body = f"  workloadSelector: {{labels: {selector}}}\n" if selector else ""
    return f"""---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {name}, namespace: {namespace}}}
spec:
{body}  egress:
  - hosts: {hosts}
"""


def hosts_seen(text: str, namespace: str, labels: dict[str, str] | None = None) -> set[str]:
    config = load(text)
    node = NodeInfo("n", ClientKind.MESH, namespace=namespace, labels=tuple((labels or {}).items()))
    listeners = translate(config, build_static_registry(config), node).resources[LISTENER]
    return {name.rpartition(":")[0] for name in listeners if name.endswith(":80")}


ALL = {
    "orders.shop.svc.cluster.local",
    "cart.shop.svc.cluster.local",
    "ledger.finance.svc.cluster.local",
    "audit.finance.svc.cluster.local",
    "api.example.com",
    "mirror.example.com",
}


def test_without_a_sidecar_a_workload_sees_every_service() -> None:
    assert hosts_seen(SERVICES, "shop") == ALL


def test_namespace_wildcard_own_namespace_and_a_named_host() -> None:
    text = SERVICES + _sidecar(
        "default", "shop", '["./*", "finance/ledger.finance.svc.cluster.local"]'
    )
    assert hosts_seen(text, "shop") == {
        "orders.shop.svc.cluster.local",
        "cart.shop.svc.cluster.local",
        "ledger.finance.svc.cluster.local",
    }
    # The Sidecar is shop's: another namespace is not scoped by it.
    assert hosts_seen(text, "finance") == ALL


def test_any_namespace_with_a_wildcard_dns_name() -> None:
    text = SERVICES + _sidecar("default", "shop", '["*/*.example.com"]')
    assert hosts_seen(text, "shop") == {"api.example.com", "mirror.example.com"}


def test_the_namespace_part_is_where_the_service_is_declared() -> None:
    # api.example.com is declared in "external": "shop/api.example.com" is not it.
    text = SERVICES + _sidecar(
        "default", "shop", '["shop/api.example.com", "./cart.shop.svc.cluster.local"]'
    )
    assert hosts_seen(text, "shop") == {"cart.shop.svc.cluster.local"}


def test_excluding_every_host_imports_nothing() -> None:
    assert hosts_seen(SERVICES + _sidecar("default", "shop", '["~/*"]'), "shop") == set()
    assert hosts_seen(SERVICES + _sidecar("default", "shop", '["*/*", "~/*"]'), "shop") == set()


def test_tilde_entries_exclude_hosts_from_what_the_others_import() -> None:
    # "~<namespace>/host": that namespace's host, however it is imported.
    text = SERVICES + _sidecar(
        "default", "shop", '["*/*", "~finance/audit.finance.svc.cluster.local"]'
    )
    assert hosts_seen(text, "shop") == ALL - {"audit.finance.svc.cluster.local"}
    # "~./": the Sidecar's own namespace; "~/": every namespace, with wildcards.
    text = SERVICES + _sidecar(
        "default",
        "shop",
        '["./*", "external/*", "~./cart.shop.svc.cluster.local", "~/*.example.com"]',
    )
    assert hosts_seen(text, "shop") == {"orders.shop.svc.cluster.local"}
    # An exclusion scoped to another namespace does not hide a host declared elsewhere.
    text = SERVICES + _sidecar("default", "shop", '["*/*", "~finance/api.example.com"]')
    assert hosts_seen(text, "shop") == ALL


def test_a_selecting_sidecar_wins_over_the_namespace_default_and_root_default() -> None:
    text = (
        SERVICES
        + _sidecar("default", "istio-system", '["finance/*"]')
        + _sidecar("default", "shop", '["./*"]')
        + _sidecar("payments", "shop", '["external/*"]', selector="{app: payments}")
    )
    assert hosts_seen(text, "shop", {"app": "payments", "v": "1"}) == {
        "api.example.com",
        "mirror.example.com",
    }
    assert hosts_seen(text, "shop", {"app": "web"}) == {
        "orders.shop.svc.cluster.local",
        "cart.shop.svc.cluster.local",
    }
    # A namespace without its own Sidecar gets the root namespace's.
    assert hosts_seen(text, "web") == {
        "ledger.finance.svc.cluster.local",
        "audit.finance.svc.cluster.local",
    }
    # In the root namespace's default, "./" is each workload's own namespace.
    own = SERVICES + _sidecar("default", "istio-system", '["./*"]')
    assert hosts_seen(own, "finance") == {
        "ledger.finance.svc.cluster.local",
        "audit.finance.svc.cluster.local",
    }
    # A Sidecar with a selector in the root namespace is not a mesh-wide default.
    rooted = SERVICES + _sidecar("only", "istio-system", '["~/*"]', selector="{app: web}")
    assert hosts_seen(rooted, "web", {"app": "web"}) == ALL


def test_export_to_still_applies_under_a_sidecar() -> None:
    private = _service("vault", "finance", "vault.finance.svc.cluster.local", '  exportTo: ["."]\n')
    text = SERVICES + "---" + private + _sidecar("default", "shop", '["finance/*"]')
    assert hosts_seen(text, "shop") == {
        "ledger.finance.svc.cluster.local",
        "audit.finance.svc.cluster.local",
    }


ROUTING = """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ledger, namespace: shop}
spec:
  hosts: [ledger.finance.svc.cluster.local]
  http:
  - timeout: 3s
    route: [{destination: {host: audit.finance.svc.cluster.local}}]
"""


def test_a_routed_to_service_comes_with_the_virtual_service() -> None:
    # shop's VirtualService for ledger is imported by "./ledger...": the service it
    # sends to (audit) is in scope too, as Istio adds a VirtualService's destinations.
    text = (
        SERVICES + ROUTING + _sidecar("default", "shop", '["./ledger.finance.svc.cluster.local"]')
    )
    assert hosts_seen(text, "shop") == {"audit.finance.svc.cluster.local"}
    config = load(text)
    node = NodeInfo("n", ClientKind.MESH, namespace="shop")
    routes = translate(config, build_static_registry(config), node).resources[ROUTE]
    assert "ledger.finance.svc.cluster.local:80" not in routes  # not a service it imports
    # Importing the service from its namespace and the route from shop's:
    both = (
        SERVICES
        + ROUTING
        + _sidecar("default", "shop", '["finance/ledger.finance.svc.cluster.local", "./*"]')
    )
    config = load(both)
    routes = translate(config, build_static_registry(config), node).resources[ROUTE]
    route = routes["ledger.finance.svc.cluster.local:80"].virtual_hosts[0].routes[0].route
    assert route.timeout.seconds == 3 and route.cluster.endswith("audit.finance.svc.cluster.local")


def test_an_envoy_node_is_scoped_alike() -> None:
    config = load(SERVICES + _sidecar("default", "shop", '["./*"]'))
    node = NodeInfo("e", ClientKind.ENVOY, namespace="shop")
    (table,) = translate(config, build_static_registry(config), node).resources[ROUTE].values()
    domains = {d for vh in table.virtual_hosts for d in vh.domains if ":" not in d}
    # "*": the catch-all for hosts outside the mesh (outbound_policy.py).
    assert domains == {"orders.shop.svc.cluster.local", "cart.shop.svc.cluster.local", "*"}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "egress: [{port: {number: 80, protocol: HTTP, name: http}, hosts: [./*]}]",
            "spec.egress[0].port: not supported yet",
        ),
        (
            "egress: [{hosts: [./*], captureMode: NONE}]",
            "spec.egress[0].captureMode: not supported yet",
        ),
        ("egress: [{hosts: [./*], bind: 127.0.0.1}]", "spec.egress[0].bind: not supported yet"),
        (
            "ingress: [{port: {number: 9080, protocol: HTTP, name: http}}]",
            "spec.ingress: not supported yet",
        ),
        (
            "outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: egress.mesh}}",
            "spec.outboundTrafficPolicy.egressProxy: not supported yet",
        ),
        (
            "outboundTrafficPolicy: {mode: PASSTHROUGH}",
            'spec.outboundTrafficPolicy.mode: unknown value "PASSTHROUGH"',
        ),
        (
            "egress: [{hosts: [reviews]}]",
            'spec.egress[0].hosts[0]: "reviews" is not "namespace/dnsName"',
        ),
        ("egress: [{hosts: [Bad_NS/*]}]", 'spec.egress[0].hosts[0]: "Bad_NS" is not "*", "."'),
        ("egress: [{hosts: [~Bad_NS/*]}]", 'spec.egress[0].hosts[0]: "Bad_NS" is not "*", "."'),
        ("egress: [{hosts: [./reviews]}]", 'spec.egress[0].hosts[0]: "reviews" is a short name'),
        (
            "egress: [{hosts: [shop/]}]",
            'spec.egress[0].hosts[0]: "shop/" is not "namespace/dnsName"',
        ),
        ("egress: [{hosts: []}]", "spec.egress[0].hosts: must not be empty"),
        ("workloadSelector: {labels: {}}", "spec.workloadSelector.labels: required"),
        ("workloadSelector: {}", "spec.workloadSelector.labels: required"),
        ("workloadSelector: {labels: {app: [1]}}", "spec.workloadSelector.labels.app: expected"),
        (
            "egress: [{hosts: [./*]}, {hosts: [istio-system/*]}]",
            "spec.egress: only one egress entry",
        ),
    ],
)
def test_what_a_proxyless_client_cannot_honour_is_refused_by_field(
    spec: str, expected: str
) -> None:
    head = "apiVersion: networking.istio.io/v1\nkind: Sidecar\n"
    text = f"{head}metadata: {{name: s, namespace: shop}}\nspec: {{{spec}}}\n"
    (problem,) = problems(text)  # one problem: no second, misleading one beside it
    assert problem.startswith(expected), problem


def test_two_namespace_defaults_are_refused_with_istios_code() -> None:
    text = SERVICES + _sidecar("a", "shop", '["./*"]') + _sidecar("b", "shop", '["*/*"]')
    with pytest.raises(ConfigLoadError) as caught:
        load(text)
    (problem,) = caught.value.problems
    assert (problem.resource, problem.field, problem.code) == (
        "Sidecar shop/b",
        "spec.workloadSelector",
        "IST0111",
    )


def test_overlapping_selectors_are_a_warning_naming_the_one_applied() -> None:
    text = (
        SERVICES
        + _sidecar("a", "shop", '["./*"]', selector="{app: web}")
        + _sidecar("b", "shop", '["*/*"]', selector="{tier: front}")
        + _sidecar("c", "shop", '["*/*"]', selector="{app: batch, tier: back}")
    )
    config = load(text)
    (warning,) = [w for w in config.warnings if w.code == "IST0110"]
    assert warning.resource == "Sidecar shop/b" and "a is applied" in warning.message
    assert hosts_seen(text, "shop", {"app": "web", "tier": "front"}) == {
        "orders.shop.svc.cluster.local",
        "cart.shop.svc.cluster.local",
    }


def _policy_sidecar(policy: str, selector: str = "") -> str:
    body = f"  workloadSelector: {{labels: {selector}}}\n" if selector else ""
    return f"""---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {"only" if selector else "default"}, namespace: shop}}
spec:
{body}  outboundTrafficPolicy: {policy}
"""


def _sent_mode(text: str, kind: ClientKind, labels: dict[str, str] | None = None) -> str | None:
    return sent_mode(load(text), kind, labels)


def sent_mode(
    config: MeshConfig, kind: ClientKind, labels: dict[str, str] | None = None
) -> str | None:
    """The mode the library decodes from what `kind` is sent (None: no listener)."""
    node = NodeInfo("n", kind, namespace="shop", labels=tuple((labels or {}).items()))
    listener = (
        translate(config, build_static_registry(config), node)
        .resources[LISTENER]
        .get(OUTBOUND_POLICY_LISTENER)
    )
    if listener is None:
        return None
    any_msg = any_pb2.Any()
    any_msg.Pack(listener)
    decoded = decode_listener(any_msg)
    assert isinstance(decoded, Listener)
    return decoded.outbound_policy


def test_a_sidecars_outbound_mode_reaches_library_clients_only() -> None:
    text = SERVICES + _policy_sidecar("{mode: REGISTRY_ONLY}")
    assert _sent_mode(text, ClientKind.MESH) == "REGISTRY_ONLY"
    assert _sent_mode(SERVICES + _policy_sidecar("{mode: ALLOW_ANY}"), ClientKind.MESH) == (
        "ALLOW_ANY"
    )
    assert _sent_mode(text, ClientKind.GRPC) is None  # grpcio has no passthrough
    assert _sent_mode(SERVICES, ClientKind.MESH) is None  # no Sidecar: the client's own
    # As istiod reads it: outboundTrafficPolicy without a mode is REGISTRY_ONLY.
    assert _sent_mode(SERVICES + _policy_sidecar("{}"), ClientKind.MESH) == "REGISTRY_ONLY"
    # The Sidecar that applies decides: a selecting one without a mode has none.
    both = text + _sidecar("only", "shop", '["*/*"]', selector="{app: web}")
    assert _sent_mode(both, ClientKind.MESH, {"app": "web"}) is None
    assert _sent_mode(both, ClientKind.MESH, {"app": "batch"}) == "REGISTRY_ONLY"


def test_an_excluded_host_does_not_bring_the_virtual_service_routing_it() -> None:
    # The exclusion is scoped to shop, the VirtualService's namespace: the route
    # is left out, while finance's service itself stays imported (default route).
    text = (
        SERVICES
        + ROUTING
        + _sidecar("default", "shop", '["./*", "finance/*", "~./ledger.finance.svc.cluster.local"]')
    )
    config = load(text)
    node = NodeInfo("n", ClientKind.MESH, namespace="shop")
    routes = translate(config, build_static_registry(config), node).resources[ROUTE]
    action = routes["ledger.finance.svc.cluster.local:80"].virtual_hosts[0].routes[0].route
    assert not action.HasField("timeout")
    assert action.cluster == "outbound|80||ledger.finance.svc.cluster.local"
