"""Writes src/proxyless_mesh/xds_client/xds_schema.txt: the field tables of
every protobuf message the xDS client decodes (the resource types, the Any
payloads the decoders unpack, the discovery envelopes), read from the
generated Envoy modules, so that the client can decode without them (issue 25).

    python tools/gen_xds_schema.py [--check]

One line per message: `full.Name<TAB>field;field;...`, each field
`number,name,kind,repeated,oneof,presence,type` (kind: protobuf's
FieldDescriptor type number; type: the message or enum's full name); enums:
`enum full.Name<TAB>number=NAME;...`. --check fails if the file is stale.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

OUT = Path(__file__).resolve().parents[1] / "src/proxyless_mesh/xds_client/xds_schema.txt"

ROOTS = (
    ("envoy.service.discovery.v3.discovery_pb2", "DiscoveryResponse"),
    ("envoy.service.discovery.v3.discovery_pb2", "DeltaDiscoveryResponse"),
    ("envoy.service.discovery.v3.discovery_pb2", "Resource"),
    ("envoy.service.discovery.v3.discovery_pb2", "DiscoveryRequest"),
    ("envoy.service.discovery.v3.discovery_pb2", "DeltaDiscoveryRequest"),
    ("envoy.config.listener.v3.listener_pb2", "Listener"),
    ("envoy.config.route.v3.route_pb2", "RouteConfiguration"),
    ("envoy.config.route.v3.route_components_pb2", "FilterConfig"),
    ("envoy.config.route.v3.route_components_pb2", "CorsPolicy"),
    ("envoy.config.cluster.v3.cluster_pb2", "Cluster"),
    ("envoy.config.endpoint.v3.endpoint_pb2", "ClusterLoadAssignment"),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
        "HttpConnectionManager",
    ),
    ("envoy.extensions.filters.http.router.v3.router_pb2", "Router"),
    ("envoy.extensions.filters.http.fault.v3.fault_pb2", "HTTPFault"),
    ("envoy.extensions.filters.http.rbac.v3.rbac_pb2", "RBAC"),
    ("envoy.extensions.filters.http.rbac.v3.rbac_pb2", "RBACPerRoute"),
    ("envoy.extensions.filters.http.jwt_authn.v3.config_pb2", "JwtAuthentication"),
    ("envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2", "ExtAuthz"),
    ("envoy.extensions.transport_sockets.tls.v3.tls_pb2", "UpstreamTlsContext"),
    ("envoy.extensions.transport_sockets.tls.v3.tls_pb2", "DownstreamTlsContext"),
    ("envoy.extensions.upstreams.http.v3.http_protocol_options_pb2", "HttpProtocolOptions"),
    ("google.protobuf.struct_pb2", "Struct"),
)


def _field(f: FieldDescriptor) -> str:
    type_name = ""
    if f.message_type is not None:
        type_name = f.message_type.full_name
    elif f.enum_type is not None:
        type_name = f.enum_type.full_name
    oneof = f.containing_oneof.name if f.containing_oneof is not None else ""
    repeated = int(f.is_repeated)
    presence = int(f.has_presence)
    return f"{f.number},{f.name},{f.type},{repeated},{oneof},{presence},{type_name}"


def collect() -> list[str]:
    messages: dict[str, Descriptor] = {}
    enums: dict[str, EnumDescriptor] = {}
    todo = [getattr(importlib.import_module(m), n).DESCRIPTOR for m, n in ROOTS]
    while todo:
        d = todo.pop()
        if d.full_name in messages:
            continue
        messages[d.full_name] = d
        for f in d.fields:
            if f.message_type is not None:
                todo.append(f.message_type)
            if f.enum_type is not None:
                enums[f.enum_type.full_name] = f.enum_type
    lines = []
    for name in sorted(messages):
        d = messages[name]
        map_entry = "map" if d.GetOptions().map_entry else ""
        fields = ";".join(_field(f) for f in sorted(d.fields, key=lambda f: f.number))
        lines.append(f"{name}\t{map_entry}\t{fields}")
    for name in sorted(enums):
        values = ";".join(f"{v.number}={v.name}" for v in enums[name].values)
        lines.append(f"enum {name}\t\t{values}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    text = "\n".join(collect()) + "\n"
    if parser.parse_args().check:
        if OUT.read_text() != text:
            sys.exit(f"{OUT} is stale: run python tools/gen_xds_schema.py")
        return
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text.splitlines())} lines, {len(text)} bytes)")


if __name__ == "__main__":
    main()
