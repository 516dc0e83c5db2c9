"""outboundTrafficPolicy for Envoy and the mesh default: which mode a node
gets (its Sidecar's, else the control plane's flag, else Istio's ALLOW_ANY for
Envoy and nothing for library clients) and Istio's catch-all virtual host that
carries it: `block_all` (502) or `allow_any` (PassthroughCluster, a dynamic
forward proxy by the Host header)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from mesh_control_plane.admin.simulate_scope import outside_outcome
from mesh_control_plane.config import ConfigLoadError, MeshSettings
from mesh_control_plane.config.loader import parse_documents
from mesh_control_plane.config.model import MeshConfig
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import CLUSTER, LISTENER, ROUTE, ClientKind, NodeInfo, translate

from .test_config_policies import load
from .test_sidecar_scope import SERVICES, _policy_sidecar, sent_mode

DFP_FILTER = "envoy.filters.http.dynamic_forward_proxy"


def _with_default(config: MeshConfig, mode: str | None) -> MeshConfig:
    return dataclasses.replace(
        config, settings=dataclasses.replace(config.settings, outbound_policy=mode)
    )


def _envoy(config: MeshConfig, labels: dict[str, str] | None = None, router: bool = False) -> Any:
    node = NodeInfo(
        "e",
        ClientKind.ENVOY,
        namespace="shop",
        labels=tuple((labels or {}).items()),
        router=router,
        sidecar=not router,
    )
    return translate(config, build_static_registry(config), node).resources


def _catch_all(resources: Any) -> Any:
    """The last virtual host of the outbound route table, checked to be `*`."""
    vhost = resources[ROUTE]["virtualOutbound"].virtual_hosts[-1]
    assert list(vhost.domains) == ["*"]
    return vhost


def _outbound_filters(resources: Any) -> list[str]:
    (chain,) = resources[LISTENER]["virtualOutbound"].filter_chains
    manager = hcm_pb2.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(manager)
    return [f.name for f in manager.http_filters]


def test_envoy_passes_through_by_default_as_istio() -> None:
    resources = _envoy(load(SERVICES))
    vhost = _catch_all(resources)
    assert vhost.name == vhost.routes[0].name == "allow_any"
    assert vhost.routes[0].route.cluster == "PassthroughCluster"
    assert vhost.routes[0].route.timeout.ToNanoseconds() == 0  # no timeout, as Istio's
    passthrough = resources[CLUSTER]["PassthroughCluster"]
    assert passthrough.cluster_type.name == "envoy.clusters.dynamic_forward_proxy"
    # The filter resolving the Host goes before the router (last).
    assert _outbound_filters(resources)[0] == DFP_FILTER
    assert _outbound_filters(resources)[-1] == "envoy.filters.http.router"
    # Every mesh host keeps its own virtual host, before the catch-all.
    names = [v.name for v in resources[ROUTE]["virtualOutbound"].virtual_hosts]
    assert "orders.shop.svc.cluster.local:80" in names[:-1]


def test_registry_only_is_istios_block_all() -> None:
    resources = _envoy(_with_default(load(SERVICES), "REGISTRY_ONLY"))
    vhost = _catch_all(resources)
    assert vhost.name == vhost.routes[0].name == "block_all"
    assert vhost.routes[0].direct_response.status == 502
    assert "PassthroughCluster" not in resources[CLUSTER]
    assert DFP_FILTER not in _outbound_filters(resources)


def test_the_sidecars_mode_overrides_the_mesh_default_for_its_workloads() -> None:
    selected = _policy_sidecar("{mode: ALLOW_ANY}", selector="{app: loose}")
    config = _with_default(load(SERVICES, selected), "REGISTRY_ONLY")
    assert _catch_all(_envoy(config, {"app": "loose"})).name == "allow_any"
    assert _catch_all(_envoy(config, {"app": "other"})).name == "block_all"
    strict = load(SERVICES, _policy_sidecar("{mode: REGISTRY_ONLY}"))
    assert _catch_all(_envoy(_with_default(strict, "ALLOW_ANY"))).name == "block_all"


def test_gateways_get_no_catch_all() -> None:
    """Istio's gateways answer 404 for a host no route names: no mode applies."""
    resources = _envoy(_with_default(load(SERVICES), "ALLOW_ANY"), router=True)
    assert "virtualOutbound" not in resources[ROUTE]
    assert "PassthroughCluster" not in resources[CLUSTER]


def test_the_mesh_default_reaches_library_clients_when_set() -> None:
    """Unset, a library client keeps its own policy (no listener); set, it is
    sent as a Sidecar's mode is, and a Sidecar's mode still wins."""
    assert sent_mode(load(SERVICES), ClientKind.MESH) is None
    strict = _with_default(load(SERVICES), "REGISTRY_ONLY")
    assert sent_mode(strict, ClientKind.MESH) == "REGISTRY_ONLY"
    allow = load(SERVICES, _policy_sidecar("{mode: ALLOW_ANY}"))
    assert sent_mode(_with_default(allow, "REGISTRY_ONLY"), ClientKind.MESH) == "ALLOW_ANY"
    # grpcio has no passthrough: it is sent no mode.
    assert sent_mode(_with_default(load(SERVICES), "ALLOW_ANY"), ClientKind.GRPC) is None


def test_simulate_names_the_mesh_default() -> None:
    """The admin server's simulate says what the mesh default does to a host
    outside the mesh; a Sidecar's mode still wins."""
    config = load(SERVICES, _policy_sidecar("{mode: ALLOW_ANY}", selector="{app: loose}"))
    (sidecar,) = config.sidecars
    assert outside_outcome(None, "REGISTRY_ONLY") == "refused (REGISTRY_ONLY, the mesh default)"
    assert outside_outcome(None, None).startswith("passed through (ALLOW_ANY) or refused")
    assert outside_outcome(sidecar, "REGISTRY_ONLY").startswith("passed through (ALLOW_ANY, ")


def _mesh_config_map(mesh: str) -> str:
    return f"""---
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: "{mesh}"
"""


def _documents(*texts: str) -> list[tuple[str, Any]]:
    return [("x.yaml", d) for text in texts for d in yaml.safe_load_all(text)]


def test_the_mesh_configs_outbound_traffic_policy_is_the_default_unless_the_flag_says() -> None:
    strict = _documents(SERVICES, _mesh_config_map("outboundTrafficPolicy: {mode: REGISTRY_ONLY}"))
    assert parse_documents(strict).settings.outbound_policy == "REGISTRY_ONLY"
    assert _catch_all(_envoy(parse_documents(strict))).name == "block_all"
    flag = MeshSettings(outbound_policy="ALLOW_ANY")
    assert parse_documents(strict, flag).settings.outbound_policy == "ALLOW_ANY"
    # As istiod reads it: a policy without a mode is REGISTRY_ONLY.
    bare = _documents(SERVICES, _mesh_config_map("outboundTrafficPolicy: {}"))
    assert parse_documents(bare).settings.outbound_policy == "REGISTRY_ONLY"
    assert parse_documents(_documents(SERVICES)).settings.outbound_policy is None
    wrong = _documents(SERVICES, _mesh_config_map("outboundTrafficPolicy: {mode: NONE}"))
    with pytest.raises(ConfigLoadError) as caught:
        parse_documents(wrong)
    (problem,) = caught.value.problems
    assert problem.field == "data.mesh.outboundTrafficPolicy.mode"
