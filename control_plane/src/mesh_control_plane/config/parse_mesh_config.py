"""Istio's mesh config, as istiod reads it: the ConfigMap `istio` in the root
namespace, its `data.mesh` a MeshConfig in YAML. Read from it here: the
`extensionProviders` that AuthorizationPolicy CUSTOM names
(`envoyExtAuthzHttp`, `envoyExtAuthzGrpc`), into the library's `ExtAuthz`,
and `outboundTrafficPolicy.mode`, the mesh default for hosts outside the mesh
(unless `meshctl control-plane --outbound-traffic-policy` says otherwise).

Every other MeshConfig field, and providers of other types (tracing, access
log), are not read: mesh-wide settings come from `meshctl control-plane`
flags. They load with a warning naming the field, never silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from proxyless_mesh.model import ExtAuthz
from proxyless_mesh.policy import PolicyConfigError

from .authorization import custom_provider
from .errors import ConfigProblem
from .model import MeshConfig, Meta
from .schema import Problems, check_str, get_bool, get_list, get_str, join, read_object
from .syntax import parse_duration

MESH_CONFIG_MAP = "istio"
_HTTP_FIELDS = (
    "service",
    "port",
    "timeout",
    "pathPrefix",
    "failOpen",
    "statusOnError",
    "includeRequestHeadersInCheck",
    "headersToUpstreamOnAllow",
    "headersToDownstreamOnDeny",
)
_HTTP_UNSUPPORTED = (
    "includeHeadersInCheck",
    "includeAdditionalHeadersInCheck",
    "includeRequestBodyInCheck",
    "headersToUpstreamOnDeny",
)
_GRPC_FIELDS = ("service", "port", "timeout", "failOpen", "statusOnError")
_GRPC_UNSUPPORTED = ("includeRequestBodyInCheck", "clearRouteCache")
_DEFAULT_TIMEOUT = 600.0  # Istio's documented default for both provider types


@dataclass(frozen=True)
class MeshConfigMap:
    """The `istio` ConfigMap: its extension providers by name, and the
    MeshConfig paths that were not read (each a warning)."""

    meta: Meta
    providers: Mapping[str, ExtAuthz] = field(default_factory=dict)
    not_read: tuple[str, ...] = ()
    outbound_policy: str | None = None  # outboundTrafficPolicy.mode, when set


def parse_mesh_config_map(p: Problems, meta: Meta, data: object) -> MeshConfigMap:
    if meta.name != MESH_CONFIG_MAP:
        p.add(
            "metadata.name", f"only the ConfigMap {MESH_CONFIG_MAP!r} (Istio's mesh config) is read"
        )
        return MeshConfigMap(meta)
    entries = read_object(p, data, "data", ("mesh", "meshNetworks"))
    text = get_str(p, entries, "mesh", "data") or ""
    try:
        mesh = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        p.add("data.mesh", f"is not valid YAML: {exc}")
        return MeshConfigMap(meta)
    if not isinstance(mesh, Mapping):
        p.add("data.mesh", "expected a MeshConfig mapping")
        return MeshConfigMap(meta)
    read = ("extensionProviders", "outboundTrafficPolicy")
    not_read = [f"data.mesh.{key}" for key in mesh if key not in read]
    outbound = _outbound_mode(p, mesh)
    not_read += ["data.meshNetworks"] if "meshNetworks" in entries else []
    providers: dict[str, ExtAuthz] = {}
    where = "data.mesh.extensionProviders"
    for i, raw in enumerate(get_list(p, mesh, "extensionProviders", "data.mesh")):
        item_where = f"{where}[{i}]"
        if not isinstance(raw, Mapping):
            p.add(item_where, "expected a mapping")
            continue
        name = get_str(p, raw, "name", item_where, required=True)
        kinds = [k for k in raw if k != "name"]
        if len(kinds) != 1:
            p.add(item_where, f"expected one provider type besides name, got {kinds}")
            continue
        kind = kinds[0]
        if kind not in ("envoyExtAuthzHttp", "envoyExtAuthzGrpc"):
            not_read.append(join(item_where, kind))
            continue
        provider = _ext_authz(p, raw[kind], join(item_where, kind), grpc=kind.endswith("Grpc"))
        if name in providers:
            p.add(join(item_where, "name"), f"duplicate extension provider {name!r}")
        elif name and provider is not None:
            providers[name] = provider
    return MeshConfigMap(meta, providers, tuple(not_read), outbound)


def _outbound_mode(p: Problems, mesh: Mapping[str, Any]) -> str | None:
    """`outboundTrafficPolicy.mode`; an unset mode is the enum's zero,
    REGISTRY_ONLY, as istiod reads it."""
    if "outboundTrafficPolicy" not in mesh:
        return None
    where = "data.mesh.outboundTrafficPolicy"
    policy = read_object(p, mesh["outboundTrafficPolicy"], where, ("mode",))
    mode = check_str(p, policy.get("mode", "REGISTRY_ONLY"), join(where, "mode"))
    if mode not in ("ALLOW_ANY", "REGISTRY_ONLY"):
        p.add(join(where, "mode"), f"expected ALLOW_ANY or REGISTRY_ONLY, got {mode!r}")
        return None
    return mode


def _ext_authz(p: Problems, raw: object, where: str, *, grpc: bool) -> ExtAuthz | None:
    start = len(p.sink)
    fields, unsupported = (
        (_GRPC_FIELDS, _GRPC_UNSUPPORTED) if grpc else (_HTTP_FIELDS, _HTTP_UNSUPPORTED)
    )
    spec = read_object(p, raw, where, fields, unsupported)
    service = get_str(p, spec, "service", where, required=True) or ""
    host = service.rpartition("/")[2]  # `[<namespace>/]<hostname>`
    port = _port(p, spec.get("port"), join(where, "port"))
    timeout = _DEFAULT_TIMEOUT
    if (text := get_str(p, spec, "timeout", where)) is not None:
        parsed = parse_duration(text)
        if parsed is None or parsed <= 0:
            p.add(join(where, "timeout"), f"invalid duration {text!r}")
        timeout = parsed or timeout
    status = 403
    if (text := get_str(p, spec, "statusOnError", where)) is not None:
        # Envoy's HttpStatus takes the codes its StatusCode enum names (not 418, 599...).
        from envoy.type.v3 import http_status_pb2

        if not (text.isdigit() and int(text) in http_status_pb2.StatusCode.values()[1:]):
            p.add(join(where, "statusOnError"), f"not an HTTP status Envoy knows: {text!r}")
        else:
            status = int(text)
    prefix = get_str(p, spec, "pathPrefix", where) or ""
    if prefix and not prefix.startswith("/"):
        p.add(join(where, "pathPrefix"), "must start with /")
    if len(p.sink) != start or port is None:
        return None
    included = _names(p, spec, "includeRequestHeadersInCheck", where)
    return ExtAuthz(
        target=f"{host}:{port}",
        grpc=grpc,
        timeout=timeout,
        fail_open=bool(get_bool(p, spec, "failOpen", where)),
        status_on_error=status,
        path_prefix=prefix,
        allowed_headers=included if "includeRequestHeadersInCheck" in spec else None,
        upstream_headers=_names(p, spec, "headersToUpstreamOnAllow", where),
        client_headers=_names(p, spec, "headersToDownstreamOnDeny", where),
    )


def _port(p: Problems, value: Any, where: str) -> int | None:
    """Istio writes the port as a number or a string of one."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        p.add(where, f"expected a port number, got {value!r}")
        return None
    return value


def _names(p: Problems, spec: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    names = []
    for i, value in enumerate(get_list(p, spec, key, where)):
        text = check_str(p, value, f"{join(where, key)}[{i}]")
        if text:
            names.append(text.lower())
    return tuple(names)


def mesh_config_problems(
    resources: Sequence[object], config: MeshConfig
) -> tuple[list[ConfigProblem], list[ConfigProblem]]:
    """(problems, warnings) once everything is loaded: the mesh ConfigMap must
    be in the root namespace (istiod reads no other); every CUSTOM policy must
    name a provider it defines; each field not read is a warning."""
    problems, warnings = [], []
    for r in resources:
        if not isinstance(r, MeshConfigMap):
            continue
        if r.meta.namespace != config.settings.root_namespace:
            root = config.settings.root_namespace
            message = f"the mesh config is read from the root namespace {root!r} only"
            problems.append(ConfigProblem(r.meta.file, r.meta.ref, "metadata.namespace", message))
        for path in r.not_read:
            message = "not read: mesh-wide settings come from meshctl control-plane flags"
            warnings.append(ConfigProblem(r.meta.file, r.meta.ref, path, message))
        hosts = {h for se in config.service_entries for h in se.hosts}
        for name, provider in r.providers.items():
            host = provider.target.rpartition(":")[0]
            if host not in hosts:
                message = (
                    f"provider {name!r}: {host} is no ServiceEntry here; unless a registry "
                    "provides it, what CUSTOM sends there fails (statusOnError)"
                )
                warnings.append(
                    ConfigProblem(r.meta.file, r.meta.ref, "data.mesh.extensionProviders", message)
                )
    providers = dict(config.extension_providers)
    for policy in config.authorization_policies:
        try:
            custom_provider(policy.resource(), providers)
        except PolicyConfigError as exc:
            field = exc.field.rpartition(f"{policy.meta.ref}.")[2]
            message = str(exc).removeprefix(f"{exc.field}: ")
            problems.append(ConfigProblem(policy.meta.file, policy.meta.ref, field, message))
    return problems, warnings
