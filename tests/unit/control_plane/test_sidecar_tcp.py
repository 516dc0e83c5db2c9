"""A sidecar's TCP ports: AuthorizationPolicy's TCP part as Istio applies it
to TCP traffic, the inbound TCP listener and the outbound TCP listeners
(translate/sidecar_tcp.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from mesh_control_plane.registry import build_static_registry
from mesh_control_plane.translate import CLUSTER, LISTENER, ClientKind, NodeInfo, translate
from mesh_control_plane.translate.node import OUTBOUND_TCP_METADATA_KEY
from mesh_control_plane.translate.sidecar_tcp import tcp_part
from mesh_control_plane.translate.tcp_telemetry import ALS_CLUSTER, DESTINATION_SERVICE_TAG

from .test_gateway import load

SERVICE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: shop}
spec:
  hosts: [echo.shop.mesh]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  endpoints: [{address: 10.0.0.1, ports: {tcp: 9000}, serviceAccount: echo}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo, namespace: shop}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/sleep]}}]
  - to: [{operation: {methods: [GET]}}]
"""
ECHO = NodeInfo(
    id="sidecar~10.0.0.1~echo",
    kind=ClientKind.ENVOY,
    namespace="shop",
    service_account="echo",
    instance_ips=("10.0.0.1",),
    sidecar=True,
    inbound_ports=((9000, 19000),),
)


def policy(action: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"action": action, "rules": rules},
    }


HTTP_RULE = {
    "from": [{"source": {"principals": ["a"], "requestPrincipals": ["i/s"]}}],
    "to": [{"operation": {"ports": ["9000"], "paths": ["/x"]}}],
    "when": [
        {"key": "request.headers[x]", "values": ["1"]},
        {"key": "source.ip", "values": ["1.2.3.4"]},
    ],
}


@pytest.mark.parametrize(
    ("action", "expected_rules"),
    [
        # ALLOW: a rule with an HTTP-only field can never match TCP: dropped.
        ("ALLOW", [{"from": [{"source": {"principals": ["b"]}}]}]),
        # DENY: the HTTP-only fields are dropped, the rule denies more.
        (
            "DENY",
            [
                {
                    "from": [{"source": {"principals": ["a"]}}],
                    "to": [{"operation": {"ports": ["9000"]}}],
                    "when": [{"key": "source.ip", "values": ["1.2.3.4"]}],
                },
                {"from": [{"source": {"principals": ["b"]}}]},
            ],
        ),
    ],
)
def test_the_tcp_part_of_a_policy_is_istios(action: str, expected_rules: list[Any]) -> None:
    plain = {"from": [{"source": {"principals": ["b"]}}]}
    part = tcp_part(policy(action, [HTTP_RULE, plain]))
    assert part is not None and part["spec"]["rules"] == expected_rules
    assert tcp_part(policy("AUDIT", [plain])) is None  # AUDIT logs nothing on TCP


def test_a_declared_tcp_port_is_served_with_mtls_and_network_rbac() -> None:
    config = load(SERVICE)
    rs = translate(config, build_static_registry(config), ECHO)
    listener: Any = rs.resources[LISTENER]["inbound|9000"]
    (chain,) = listener.filter_chains  # STRICT: the mTLS chain only
    assert chain.HasField("transport_socket")
    names = [f.name for f in chain.filters]
    assert names == ["envoy.filters.network.rbac.allow", "envoy.filters.network.tcp_proxy"]
    rbac = rbac_pb2.RBAC()
    chain.filters[0].typed_config.Unpack(rbac)
    assert list(rbac.rules.policies) == ["ns[shop]-policy[echo]-rule[0]"]  # GET's rule dropped
    proxy = tcp_proxy_pb2.TcpProxy()
    chain.filters[1].typed_config.Unpack(proxy)
    assert proxy.cluster == "inbound|9000||"
    app: Any = rs.resources[CLUSTER]["inbound|9000||"]
    address = app.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.1", 19000)
    assert _logged(proxy) == ("istio_tcp.destination", "echo.shop.mesh")


def _logged(proxy: tcp_proxy_pb2.TcpProxy) -> tuple[str, str]:
    """The log name of the proxy's one TCP access log to the agent, and the
    service host it names (istio_tcp_*: translate/tcp_telemetry.py)."""
    (log,) = proxy.access_log
    config = als_pb2.TcpGrpcAccessLogConfig()
    log.typed_config.Unpack(config)
    common = config.common_config
    assert common.grpc_service.envoy_grpc.cluster_name == ALS_CLUSTER
    services = [t.literal.value for t in common.custom_tags if t.tag == DESTINATION_SERVICE_TAG]
    # The destination side's first entry waits for the caller's TLS handshake.
    connected = proxy.access_log_options.flush_access_log_on_connected
    assert connected == common.log_name.endswith(".source")
    return common.log_name, "".join(services)


def test_outbound_tcp_listeners_proxy_to_the_service_in_mesh_mtls() -> None:
    config = load(SERVICE)
    node = replace(ECHO, id="sidecar~x~sleep", service_account="sleep", instance_ips=(),
                   inbound_ports=(), outbound_tcp=(("echo.shop.mesh", 9000, 0),))  # fmt: skip
    rs = translate(config, build_static_registry(config), node)
    listener: Any = rs.resources[LISTENER]["outbound|9000||echo.shop.mesh"]
    socket_address = listener.address.socket_address
    assert (socket_address.address, socket_address.port_value) == ("127.0.0.1", 0)
    proxy = tcp_proxy_pb2.TcpProxy()
    listener.filter_chains[0].filters[0].typed_config.Unpack(proxy)
    assert proxy.cluster == "outbound|9000||echo.shop.mesh"
    assert _logged(proxy) == ("istio_tcp.source", "")  # the cluster names the service
    cluster: Any = rs.resources[CLUSTER][proxy.cluster]
    assert cluster.HasField("transport_socket")  # mesh mTLS by SDS
    assert "inbound|9000" not in rs.resources[LISTENER]  # not its instance


def test_outbound_tcp_metadata_is_read_and_checked() -> None:
    from envoy.config.core.v3 import base_pb2

    node = base_pb2.Node(id="sidecar~x", user_agent_name="envoy")
    node.metadata.fields[OUTBOUND_TCP_METADATA_KEY].string_value = "b.mesh:80=0, a.mesh:9000=1900"
    info = NodeInfo.from_proto(node)
    assert info.outbound_tcp == (("a.mesh", 9000, 1900), ("b.mesh", 80, 0))
    node.metadata.fields[OUTBOUND_TCP_METADATA_KEY].string_value = "a.mesh=1900"
    with pytest.raises(ValueError, match="HOST:PORT=LOCAL_PORT"):
        NodeInfo.from_proto(node)


def _custom(provider_type: str, rule: str = "{to: [{operation: {ports: ['9000']}}]}") -> str:
    """SERVICE's workload under a CUSTOM policy of a provider of `provider_type`
    (instead of the ALLOW policy), with one `rule`."""
    provider = f"{{name: authz, {provider_type}: {{service: authz.shop.mesh, port: 9001}}}}"
    base = SERVICE.split("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy")[0]
    return f"""{base}---
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: "extensionProviders: [{provider}]"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: custom, namespace: shop}}
spec:
  action: CUSTOM
  provider: {{name: authz}}
  rules: [{rule}]
"""


def _tcp_chain(text: str) -> Any:
    config = load(text)
    rs = translate(config, build_static_registry(config), ECHO)
    (chain,) = rs.resources[LISTENER]["inbound|9000"].filter_chains  # type: ignore[attr-defined]
    return chain


def test_custom_policies_on_tcp_ports() -> None:
    """Istio asks an HTTP provider for HTTP traffic only: nothing on TCP. A
    gRPC provider is asked per connection (network ext_authz, enabled by the
    marking RBAC filter's shadow rules), unless the rule needs HTTP."""
    http = _tcp_chain(_custom("envoyExtAuthzHttp"))
    assert [f.name for f in http.filters] == ["envoy.filters.network.tcp_proxy"]
    chain = _tcp_chain(_custom("envoyExtAuthzGrpc"))
    assert [f.name for f in chain.filters] == [
        "envoy.filters.network.rbac.ext_authz",
        "envoy.filters.network.ext_authz",
        "envoy.filters.network.tcp_proxy",
    ]
    marking = rbac_pb2.RBAC()
    chain.filters[0].typed_config.Unpack(marking)
    assert not marking.HasField("rules")  # it decides nothing, it marks
    assert list(marking.shadow_rules.policies) == [
        "istio-ext-authz-ns[shop]-policy[custom]-rule[0]"
    ]
    check = ext_authz_pb2.ExtAuthz()
    chain.filters[1].typed_config.Unpack(check)
    assert check.grpc_service.envoy_grpc.cluster_name == "outbound|9001||authz.shop.mesh"
    assert check.filter_enabled_metadata.filter == "envoy.filters.network.rbac"
    # A rule needing HTTP (a path) never matches TCP: dropped, nothing marks
    # a connection, so the check is never enabled.
    paths = _tcp_chain(_custom("envoyExtAuthzGrpc", "{to: [{operation: {paths: [/a]}}]}"))
    paths.filters[0].typed_config.Unpack(marking)
    assert list(marking.shadow_rules.policies) == []


def test_a_port_two_services_declare_is_reported_as_the_first_by_name() -> None:
    """Istio's stats take the first of the inbound cluster's services."""
    other = SERVICE.split("---")[0].replace("name: echo", "name: alias")
    config = load(SERVICE + "---" + other.replace("echo.shop.mesh", "alias.shop.mesh"))
    rs = translate(config, build_static_registry(config), ECHO)
    listener: Any = rs.resources[LISTENER]["inbound|9000"]
    proxy = tcp_proxy_pb2.TcpProxy()
    listener.filter_chains[0].filters[1].typed_config.Unpack(proxy)
    assert _logged(proxy) == ("istio_tcp.destination", "alias.shop.mesh")
