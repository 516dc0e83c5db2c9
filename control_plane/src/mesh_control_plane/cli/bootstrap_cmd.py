"""`meshctl bootstrap`: write the xDS bootstrap JSON for one workload.

The same file drives our library and grpcio's own xDS client
(GRPC_XDS_BOOTSTRAP), so it is produced by the library's own writer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from proxyless_mesh.bootstrap import make_bootstrap_json
from proxyless_mesh.model import Locality
from proxyless_mesh.security import write_private_file


def add_parser(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser(
        "bootstrap", help="print or write a workload's xDS bootstrap JSON"
    )
    p.add_argument("--xds-address", required=True, help="HOST:PORT of the control plane")
    p.add_argument("--node-id", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--service-account", required=True)
    p.add_argument("--cluster", default="", help="node.cluster (the workload's service)")
    p.add_argument("--locality", default="", type=parse_locality, help="region/zone/subzone")
    p.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    identity = p.add_argument_group("identity (the control plane's CA)")
    identity.add_argument("--ca-address", help="HOST:PORT of the CA (its ready file's 'ca')")
    identity.add_argument("--trust-domain", help="SPIFFE trust domain (default cluster.local)")
    identity.add_argument(
        "--token", help="join token (meshctl token create); else $PROXYLESS_MESH_TOKEN at run time"
    )
    identity.add_argument(
        "--credentials-dir", help="where the library keeps cert/key/roots for grpcio's xDS"
    )
    p.set_defaults(run=run)


def parse_locality(text: str) -> Locality:
    """ "region/zone/subzone", trailing parts optional: "us-east1/us-east1-b"."""
    parts = text.split("/") if text else []
    if len(parts) > 3:
        raise argparse.ArgumentTypeError(f"expected region/zone/subzone, got {text!r}")
    region, zone, sub_zone = [*parts, "", "", ""][:3]
    return Locality(region=region, zone=zone, sub_zone=sub_zone)


def run(args: argparse.Namespace) -> int:
    text = make_bootstrap_json(
        server_uri=args.xds_address,
        node_id=args.node_id,
        namespace=args.namespace,
        service_account=args.service_account,
        cluster=args.cluster,
        locality=args.locality,
        ca_address=args.ca_address,
        trust_domain=args.trust_domain,
        token=args.token,
        credentials_dir=args.credentials_dir,
    )
    if not text.endswith("\n"):
        text += "\n"
    if args.output is None:
        sys.stdout.write(text)
    elif args.token:  # a secret inside: owner-only, like the files holding keys
        write_private_file(args.output, text.encode())
    else:
        args.output.write_text(text)
    return 0
