"""exportTo on ServiceEntry, VirtualService and DestinationRule: each client is
sent only what its namespace may see ("*" everywhere, "." the resource's own
namespace, "~" nowhere, or named namespaces), as Istio decides visibility."""

from __future__ import annotations

from pathlib import Path

import pytest
from mesh_control_plane.cli.main import main
from mesh_control_plane.config import ConfigLoadError
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import CLUSTER, LISTENER, ROUTE, ClientKind, NodeInfo, translate

from .test_config_policies import load

CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: shop}
spec:
  resolution: STATIC
  location: MESH_INTERNAL
  hosts: [private.mesh]
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.1, labels: {version: v1}}]
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shared, namespace: shop}
spec:
  resolution: STATIC
  location: MESH_INTERNAL
  hosts: [shared.mesh]
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.2, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shared, namespace: shop}
spec:
  hosts: [shared.mesh]
  exportTo: [web]
  http:
  - timeout: 2s
    route: [{destination: {host: shared.mesh}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shared, namespace: shop}
spec:
  host: shared.mesh
  exportTo: ["~"]
  subsets: [{name: v1, labels: {version: v1}}]
"""


def seen(
    namespace: str, kind: ClientKind = ClientKind.MESH, text: str = CONFIG
) -> tuple[set[str], set[str], bool]:
    """(listeners, subset clusters, whether shared.mesh's route has the VS timeout)."""
    config = load(text)
    node = NodeInfo("n", kind, namespace=namespace)
    resources = translate(config, build_static_registry(config), node).resources
    listeners = set(resources[LISTENER])
    subsets = {name for name in resources[CLUSTER] if "|v1|" in name}
    route = resources[ROUTE].get("shared.mesh:80")
    timed = route is not None and route.virtual_hosts[0].routes[0].route.timeout.seconds == 2
    return listeners, subsets, timed


def test_each_namespace_sees_what_is_exported_to_it() -> None:
    shop, web, other = seen("shop"), seen("web"), seen("other")
    # "." : the ServiceEntry's own namespace only; the other is everyone's.
    assert {"private.mesh:80", "shared.mesh:80"} <= shop[0]
    assert "private.mesh:80" not in web[0] and "private.mesh:80" not in other[0]
    assert "shared.mesh:80" in web[0] and "shared.mesh:80" in other[0]
    # The VirtualService is exported to "web" only: elsewhere the default route.
    assert (shop[2], web[2], other[2]) == (False, True, False)
    # "~": the DestinationRule's subsets reach no one.
    assert shop[1] == web[1] == other[1] == set()
    everywhere = CONFIG.replace('exportTo: ["~"]', 'exportTo: ["*"]')
    assert seen("other", text=everywhere)[1] == {"outbound|80|v1|shared.mesh"}


def test_an_envoy_node_is_cached_by_its_namespace() -> None:
    base = NodeInfo("e", ClientKind.ENVOY, namespace="shop")
    assert base.cache_key != NodeInfo("e", ClientKind.ENVOY, namespace="web").cache_key


@pytest.mark.parametrize(
    ("export_to", "message"),
    [
        ('["~", web]', '"~" cannot be combined with other values'),
        ('["*", web]', '"*" cannot be combined with other values'),
        ("[Web_1]", '"Web_1" is not ".", "*", "~" or a namespace name'),
    ],
)
def test_export_to_mistakes_are_named(export_to: str, message: str) -> None:
    text = CONFIG.replace('exportTo: ["."]', f"exportTo: {export_to}")
    with pytest.raises(ConfigLoadError) as caught:
        load(text)
    assert any(message in p.message and p.code == "IST0106" for p in caught.value.problems)


def _route(namespace: str, export_to: str, seconds: int) -> str:
    return f"""
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shared-{namespace}, namespace: {namespace}}}
spec:
  hosts: [shared.mesh]
  exportTo: {export_to}
  http:
  - timeout: {seconds}s
    route: [{{destination: {{host: shared.mesh}}}}]
"""


def _timeout(text: str, namespace: str) -> int | None:
    config = load(text)
    node = NodeInfo("n", ClientKind.MESH, namespace=namespace)
    route = translate(config, build_static_registry(config), node).resources[ROUTE][
        "shared.mesh:80"
    ]
    action = route.virtual_hosts[0].routes[0].route
    return action.timeout.seconds if action.HasField("timeout") else None


BASE = CONFIG.replace(
    "  exportTo: [web]\n  http:\n  - timeout: 2s", '  exportTo: ["~"]\n  http:\n  - timeout: 2s'
)


def test_one_host_routed_per_namespace_by_virtual_services_exported_apart() -> None:
    text = BASE + _route("web", '["."]', 3) + _route("api", "[api, batch]", 4)
    assert _timeout(text, "web") == 3
    assert _timeout(text, "api") == _timeout(text, "batch") == 4
    assert _timeout(text, "shop") is None  # its own is exported nowhere: Istio's default route


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [
        ('["."]', "[web, api]", "namespace 'web'"),  # "." of web and web
        ('["*"]', "[api]", "namespace 'api'"),
        ("[]", "[]", "every namespace"),
    ],
)
def test_virtual_services_one_namespace_would_see_both_are_refused(
    first: str, second: str, shared: str
) -> None:
    text = BASE + _route("web", first, 3) + _route("api", second, 4)
    with pytest.raises(ConfigLoadError) as caught:
        load(text.replace("  exportTo: []\n", ""))
    (problem,) = caught.value.problems
    assert (problem.resource, problem.field, problem.code) == (
        "VirtualService web/shared-web",
        "spec.hosts[0]",
        "IST0109",
    )
    assert f"already routed by VirtualService api/shared-api (x.yaml) for {shared}" in (
        problem.message
    )


def test_describe_names_every_virtual_service_of_the_host_and_its_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.yaml").write_text(BASE + _route("web", '["."]', 3))
    assert main(["describe", "shared.mesh", "--config-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "routing:     VirtualService shop/shared (x.yaml), exported to ~\n" in out
    assert "also:        VirtualService web/shared-web (x.yaml), exported to .\n" in out
