"""More of the Istio-shaped corpus (tests/istio_samples): Sidecar scoping,
tcp-echo through a gateway and Telemetry scoping (ext-authz is
test_ext_authz_sample.py's), each loading and behaving as Istio documents or refused naming
kind/name/field."""

from __future__ import annotations

from pathlib import Path

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from mesh_control_plane.admin.simulate import simulate
from mesh_control_plane.cli.analyze_cmd import analyze_dir, render_findings
from mesh_control_plane.cli.main import main
from mesh_control_plane.cli.offline import load_offline
from mesh_control_plane.config import load_config_dir
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import LISTENER, ClientKind, NodeInfo, translate
from mesh_control_plane.translate.telemetry import telemetry_specs

from proxyless_mesh.telemetry import policy_from_specs

SAMPLES = Path(__file__).resolve().parents[2] / "istio_samples"
RATINGS = "http://ratings.bookinfo.svc.cluster.local:9080/ratings/0"
REVIEWS = "http://reviews.bookinfo.svc.cluster.local:9080/reviews/0"
INVENTORY = "http://inventory.warehouse.svc.cluster.local:8080/items"


def test_sidecars_scope_each_caller_as_istio_resolves_them() -> None:
    offline = load_offline(SAMPLES / "sidecar-scope")
    # productpage: bookinfo's namespace default, which imports one warehouse host.
    page = simulate(offline, "GET", INVENTORY, source="bookinfo/productpage")
    assert page["sidecar"] == "Sidecar bookinfo/default (sidecars.yaml)"
    assert page["outcome"] == "routed"
    # reviews: its own Sidecar wins over the namespace default: ratings only.
    reviews = {"app": "reviews", "version": "v1"}
    to_ratings = simulate(offline, "GET", RATINGS, source="bookinfo/reviews", labels=reviews)
    assert (to_ratings["sidecar"], to_ratings["outcome"]) == (
        "Sidecar bookinfo/reviews (sidecars.yaml)",
        "routed",
    )
    to_inventory = simulate(offline, "GET", INVENTORY, source="bookinfo/reviews", labels=reviews)
    assert to_inventory["outcome"] == (
        "not imported by Sidecar bookinfo/reviews (sidecars.yaml): not a mesh service for this "
        "caller: refused (REGISTRY_ONLY, outboundTrafficPolicy of Sidecar bookinfo/reviews)"
    )
    outside = simulate(
        offline, "GET", "http://example.org/", source="bookinfo/reviews", labels=reviews
    )
    assert outside["outcome"] == (
        "not a mesh service: refused (REGISTRY_ONLY, outboundTrafficPolicy of Sidecar "
        "bookinfo/reviews)"
    )
    # warehouse has no Sidecar of its own: the root namespace's default applies.
    stock = simulate(offline, "GET", REVIEWS, source="warehouse/inventory")
    assert stock["sidecar"] == "Sidecar istio-system/default (sidecars.yaml)"
    assert stock["outcome"].startswith("not imported by Sidecar istio-system/default")
    # Its "./*" means the caller's namespace, as istiod converts it per namespace.
    own = simulate(offline, "GET", INVENTORY, source="warehouse/inventory")
    assert own["outcome"] == "routed"
    # Without a caller, simulate shows the mesh as a whole.
    assert simulate(offline, "GET", INVENTORY)["outcome"] == "routed"
    assert render_findings(analyze_dir(SAMPLES / "sidecar-scope")) == "no problems found\n"


def test_simulate_command_takes_the_callers_labels(capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["simulate", "GET", INVENTORY, "--config-dir", str(SAMPLES / "sidecar-scope")]
    assert main([*args, "--from", "bookinfo/reviews", "--label", "app=reviews"]) == 0
    out = capsys.readouterr().out
    assert "sidecar:   Sidecar bookinfo/reviews (sidecars.yaml)\n" in out
    assert "outcome:   not imported by Sidecar bookinfo/reviews (sidecars.yaml): " in out
    assert main([*args, "--label", "app=reviews"]) == 2  # labels describe a caller


def test_tcp_echo_splits_80_20_at_the_gateway() -> None:
    config = load_config_dir(SAMPLES / "tcp-echo")
    gateway = NodeInfo(
        id="router~gw",
        kind=ClientKind.ENVOY,
        labels=(("istio", "ingressgateway"),),
        router=True,
    )
    listeners = translate(config, build_static_registry(config), gateway).resources[LISTENER]
    (chain,) = listeners["0.0.0.0_31400"].filter_chains  # type: ignore[attr-defined]
    proxy = tcp_proxy_pb2.TcpProxy()
    chain.filters[0].typed_config.Unpack(proxy)
    host = "tcp-echo.default.svc.cluster.local"  # the sample's short name, qualified
    assert [(c.name, c.weight) for c in proxy.weighted_clusters.clusters] == [
        (f"outbound|9000|v1|{host}", 80),
        (f"outbound|9000|v2|{host}", 20),
    ]
    assert render_findings(analyze_dir(SAMPLES / "tcp-echo")) == "no problems found\n"


def _policy(config, namespace: str, labels: dict[str, str]):  # type: ignore[no-untyped-def]
    node = NodeInfo("n", ClientKind.MESH, namespace=namespace, labels=tuple(labels.items()))
    return policy_from_specs(telemetry_specs(config, node))


def test_telemetry_mesh_namespace_and_workload_levels_merge() -> None:
    config = load_config_dir(SAMPLES / "telemetry")
    elsewhere = _policy(config, "warehouse", {"app": "inventory"})
    assert elsewhere.source.sampling == 10.0 and elsewhere.source.log_filter is None
    assert elsewhere.source.disabled_metrics == frozenset()
    page = _policy(config, "bookinfo", {"app": "productpage"})
    assert page.source.sampling == 10.0 and page.source.log_filter is not None
    ratings = _policy(config, "bookinfo", {"app": "ratings"})
    assert ratings.source.sampling == 100.0 and ratings.destination.sampling == 100.0
    assert "istio_requests_total" in ratings.source.disabled_metrics
    assert "istio_requests_total" in ratings.destination.disabled_metrics
    assert render_findings(analyze_dir(SAMPLES / "telemetry")) == "no problems found\n"


def test_the_otel_tracing_sample_is_refused_by_field() -> None:
    assert render_findings(analyze_dir(SAMPLES / "telemetry-otel")) == (
        "error: telemetry.yaml: Telemetry default/otel-demo: spec.tracing[0].providers: "
        "not supported: spans go to the application's OpenTelemetry SDK exporter\n"
        "1 error, 0 warnings\n"
    )
