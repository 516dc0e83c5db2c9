"""The xDS bootstrap: gRPC's JSON format, so one file drives both this library and
grpcio's own `xds:///` channels and servers.

Only the fields the mesh uses are kept; unknown fields are ignored, as gRPC does.
Every error is a `BootstrapError` naming the source and the field, because the
bootstrap is written by people and by `meshctl bootstrap` and read at process
start, where a precise message saves a debugging session.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from proxyless_mesh.errors import BootstrapError
from proxyless_mesh.model import Locality

__all__ = ["Bootstrap", "XdsServer", "file_watcher_provider", "make_bootstrap_json"]

#: The environment variables grpcio reads, in the order it reads them.
BOOTSTRAP_PATH_ENV = "GRPC_XDS_BOOTSTRAP"
BOOTSTRAP_CONFIG_ENV = "GRPC_XDS_BOOTSTRAP_CONFIG"

#: Channel credential types gRPC knows. We implement only "insecure" for now; the
#: others are recognised so we can say "not supported yet" instead of skipping them
#: silently, which would make us connect differently from grpcio given one file.
_SUPPORTED_CREDS = frozenset({"insecure"})
_KNOWN_CREDS = frozenset({"insecure", "google_default", "tls", "xds", "fake"})


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class XdsServer:
    """One entry of `xds_servers`: where the control plane is and how to reach it."""

    server_uri: str
    channel_creds: tuple[str, ...] = ("insecure",)
    server_features: tuple[str, ...] = ()


@dataclass(frozen=True)
class Bootstrap:
    """A parsed bootstrap. The client uses the first of `xds_servers`."""

    xds_servers: tuple[XdsServer, ...]
    node_id: str = ""
    node_cluster: str = ""
    locality: Locality = field(default_factory=Locality)
    node_metadata: Mapping[str, Any] = field(default_factory=_empty)
    server_listener_resource_name_template: str | None = None
    certificate_providers: Mapping[str, Any] = field(default_factory=_empty)
    #: Top-level "proxyless_mesh" object: settings only this library reads
    #: (CA address, trust domain, join token, credentials dir; see
    #: proxyless_mesh.security.IdentityConfig). grpcio ignores unknown keys.
    proxyless_mesh: Mapping[str, Any] = field(default_factory=_empty)

    @classmethod
    def from_json(cls, text: str, *, source: str = "<string>") -> Bootstrap:
        """Parse bootstrap JSON; `source` names the file or variable in errors."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BootstrapError(
                f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        return _parse(doc, source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Bootstrap:
        """Read and parse a bootstrap file."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise BootstrapError(
                f"cannot read xDS bootstrap file {os.fspath(path)!r}: {exc}"
            ) from exc
        return cls.from_json(text, source=os.fspath(path))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Bootstrap:
        """Load the bootstrap the way grpcio does: the file named by GRPC_XDS_BOOTSTRAP,
        else the JSON content of GRPC_XDS_BOOTSTRAP_CONFIG."""
        env = os.environ if environ is None else environ
        path = env.get(BOOTSTRAP_PATH_ENV)
        if path:
            return cls.from_file(path)
        content = env.get(BOOTSTRAP_CONFIG_ENV)
        if content:
            return cls.from_json(content, source=f"${BOOTSTRAP_CONFIG_ENV}")
        raise BootstrapError(
            f"no xDS bootstrap: neither {BOOTSTRAP_PATH_ENV} (a file path) nor "
            f"{BOOTSTRAP_CONFIG_ENV} (the JSON itself) is set; "
            "write one with `meshctl bootstrap` and point GRPC_XDS_BOOTSTRAP at it"
        )

    def to_json(self) -> str:
        """Serialise in gRPC's format; `from_json(b.to_json()) == b`."""
        doc: dict[str, Any] = {
            "xds_servers": [
                {
                    "server_uri": s.server_uri,
                    "channel_creds": [{"type": t} for t in s.channel_creds],
                    "server_features": list(s.server_features),
                }
                for s in self.xds_servers
            ],
            "node": _node_json(self.node_id, self.node_cluster, self.locality, self.node_metadata),
        }
        if self.server_listener_resource_name_template is not None:
            doc["server_listener_resource_name_template"] = (
                self.server_listener_resource_name_template
            )
        if self.certificate_providers:
            doc["certificate_providers"] = _thaw(self.certificate_providers)
        if self.proxyless_mesh:
            doc["proxyless_mesh"] = _thaw(self.proxyless_mesh)
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"


#: The credential files grpcio's native xDS reads (gRFC A29 `file_watcher`),
#: in the directory the bootstrap names; security's CredentialFiles writes them.
CERTIFICATE_FILE = "cert-chain.pem"
PRIVATE_KEY_FILE = "key.pem"
CA_CERTIFICATE_FILE = "root-cert.pem"
#: gRFC A29's instance name, the one the control plane's xDS refers to.
DEFAULT_PROVIDER_INSTANCE = "default"


def file_watcher_provider(
    directory: str | os.PathLike[str], refresh_interval: float = 1.0
) -> dict[str, Any]:
    """The `certificate_providers` entry for the files kept in `directory`:
    {"default": {"plugin_name": "file_watcher", "config": {...}}}. Part of the
    bootstrap format, so here: security writes the files, grpcio reads this."""
    d = Path(directory)
    return {
        DEFAULT_PROVIDER_INSTANCE: {
            "plugin_name": "file_watcher",
            "config": {
                "certificate_file": str(d / CERTIFICATE_FILE),
                "private_key_file": str(d / PRIVATE_KEY_FILE),
                "ca_certificate_file": str(d / CA_CERTIFICATE_FILE),
                "refresh_interval": f"{refresh_interval:g}s",
            },
        }
    }


def make_bootstrap_json(
    *,
    server_uri: str,
    node_id: str,
    namespace: str,
    service_account: str,
    cluster: str = "",
    locality: Locality = Locality(),  # noqa: B008 - frozen, so sharing the default is safe
    metadata: Mapping[str, Any] | None = None,
    ca_address: str | None = None,
    trust_domain: str | None = None,
    token: str | None = None,
    credentials_dir: str | None = None,
    ads: str = "sotw",
) -> str:
    """The bootstrap `meshctl bootstrap` writes for one workload.

    NAMESPACE and SERVICE_ACCOUNT go into node metadata (Istio's keys) so the
    control plane can scope configuration and identity to the workload.
    The identity settings go into the top-level "proxyless_mesh" object (never
    node metadata, which every xDS request carries); `credentials_dir` also
    adds grpcio's `file_watcher` certificate provider ("default") for the
    files the library keeps there. `ads` "delta" makes the library's own
    client use Delta xDS (xds_client/_delta.py).
    """
    meta = dict(metadata or {})
    meta["NAMESPACE"] = namespace
    meta["SERVICE_ACCOUNT"] = service_account
    section = {
        k: v
        for k, v in (
            ("ca_address", ca_address),
            ("trust_domain", trust_domain),
            ("token", token),
            ("credentials_dir", credentials_dir),
            ("ads", ads if ads != "sotw" else None),
        )
        if v
    }
    providers: dict[str, Any] = {}
    if credentials_dir:
        providers = file_watcher_provider(credentials_dir)
    return Bootstrap(
        xds_servers=(XdsServer(server_uri, ("insecure",), ("xds_v3",)),),
        node_id=node_id,
        node_cluster=cluster,
        locality=locality,
        node_metadata=meta,
        server_listener_resource_name_template="grpc/server?xds.resource.listening_address=%s",
        certificate_providers=providers,
        proxyless_mesh=section,
    ).to_json()


def _node_json(
    node_id: str, cluster: str, locality: Locality, metadata: Mapping[str, Any]
) -> dict[str, Any]:
    node: dict[str, Any] = {"id": node_id}
    if cluster:
        node["cluster"] = cluster
    loc = {
        k: v
        for k, v in (
            ("region", locality.region),
            ("zone", locality.zone),
            ("sub_zone", locality.sub_zone),
        )
        if v
    }
    if loc:
        node["locality"] = loc
    if metadata:
        node["metadata"] = _thaw(metadata)
    return node


def _thaw(value: Any) -> Any:
    """Mapping proxies back into plain dicts for json.dumps."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value


def _parse(doc: Any, source: str) -> Bootstrap:
    if not isinstance(doc, dict):
        raise BootstrapError(f"{source}: the bootstrap must be a JSON object")
    servers_json = doc.get("xds_servers")
    if servers_json is None:
        raise BootstrapError(f"{source}: field 'xds_servers' is missing")
    if not isinstance(servers_json, list) or not servers_json:
        raise BootstrapError(f"{source}: field 'xds_servers' must be a non-empty list")
    servers = tuple(
        _parse_server(s, f"xds_servers[{i}]", source) for i, s in enumerate(servers_json)
    )

    node = _get(doc, "node", dict, source, "node") or {}
    locality_json = _get(node, "locality", dict, source, "node.locality") or {}
    locality = Locality(
        region=_get(locality_json, "region", str, source, "node.locality.region") or "",
        zone=_get(locality_json, "zone", str, source, "node.locality.zone") or "",
        sub_zone=_get(locality_json, "sub_zone", str, source, "node.locality.sub_zone") or "",
    )
    metadata = _get(node, "metadata", dict, source, "node.metadata") or {}
    certs = _get(doc, "certificate_providers", dict, source, "certificate_providers") or {}
    ours = _get(doc, "proxyless_mesh", dict, source, "proxyless_mesh") or {}
    return Bootstrap(
        xds_servers=servers,
        node_id=_get(node, "id", str, source, "node.id") or "",
        node_cluster=_get(node, "cluster", str, source, "node.cluster") or "",
        locality=locality,
        node_metadata=MappingProxyType(metadata),
        server_listener_resource_name_template=_get(
            doc,
            "server_listener_resource_name_template",
            str,
            source,
            "server_listener_resource_name_template",
        ),
        certificate_providers=MappingProxyType(certs),
        proxyless_mesh=MappingProxyType(ours),
    )


def _parse_server(obj: Any, where: str, source: str) -> XdsServer:
    if not isinstance(obj, dict):
        raise BootstrapError(f"{source}: field '{where}' must be an object")
    uri = _get(obj, "server_uri", str, source, f"{where}.server_uri")
    if not uri:
        raise BootstrapError(f"{source}: field '{where}.server_uri' is missing or empty")
    creds_json = _get(obj, "channel_creds", list, source, f"{where}.channel_creds")
    if not creds_json:
        raise BootstrapError(f"{source}: field '{where}.channel_creds' is missing or empty")
    types: list[str] = []
    for i, c in enumerate(creds_json):
        ctype = (
            _get(c, "type", str, source, f"{where}.channel_creds[{i}].type")
            if isinstance(c, dict)
            else None
        )
        if not ctype:
            raise BootstrapError(
                f"{source}: field '{where}.channel_creds[{i}]' must be an object with a 'type'"
            )
        types.append(ctype)
    _check_creds(types, where, source)
    features = _get(obj, "server_features", list, source, f"{where}.server_features") or []
    if not all(isinstance(f, str) for f in features):
        raise BootstrapError(f"{source}: field '{where}.server_features' must list strings")
    return XdsServer(uri, tuple(types), tuple(features))


def _check_creds(types: list[str], where: str, source: str) -> None:
    """Like gRPC, use the first credential type it knows; unlike gRPC we implement
    only "insecure" so far, so a known type ahead of it is an error, not a skip."""
    for t in types:
        if t in _SUPPORTED_CREDS:
            return
        if t in _KNOWN_CREDS:
            break
    raise BootstrapError(
        f"{source}: field '{where}.channel_creds' has no supported type (got "
        f"{', '.join(types)}); only 'insecure' is supported now, mTLS to the control "
        "plane comes later"
    )


def _get(obj: Mapping[str, Any], key: str, kind: type, source: str, where: str) -> Any:
    """obj[key] if present and of the expected JSON type, else None; a wrong type
    is an error naming the field."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, kind):
        names: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
        raise BootstrapError(
            f"{source}: field '{where}' must be {names.get(kind, kind.__name__)}, "
            f"got {type(value).__name__}"
        )
    return value
