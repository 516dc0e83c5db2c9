"""`meshctl bootstrap`: write the xDS bootstrap JSON for one workload.

The same file drives our library and grpcio's own xDS client
(GRPC_XDS_BOOTSTRAP), so it is produced by the library's own writer.
"""

from __future__ import annotations

import argparse
import os
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
    p.add_argument(
        "--workload-name",
        help="the workload's name in metrics (WORKLOAD_NAME; default: --cluster, the app "
        "label, or the node id without its instance suffix)",
    )
    p.add_argument(
        "--cluster-id", help="the Kubernetes cluster in metrics (CLUSTER_ID; default Kubernetes)"
    )
    p.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    p.add_argument(
        "--ads",
        choices=("sotw", "delta"),
        default="sotw",
        help="the library's ADS variant: State of the World (default) or Delta (incremental: "
        "a reconnect gets only what changed); grpcio's own xDS client always uses SotW",
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        type=parse_pair,
        metavar="KEY=VALUE",
        help="a workload label (node metadata LABELS; repeatable)",
    )
    joining = p.add_argument_group("self-registration (a WorkloadGroup of the control plane)")
    joining.add_argument(
        "--workload-group", help="NAMESPACE/NAME: the Mesh registers into it when it starts"
    )
    joining.add_argument(
        "--workload-port",
        action="append",
        default=[],
        type=parse_port,
        metavar="NAME=PORT",
        help="a port to register (0: announced by the server helper; repeatable; "
        "none: the first port a server helper announces)",
    )
    joining.add_argument("--workload-address", help="the address peers reach (default 127.0.0.1)")
    identity = p.add_argument_group("identity (the control plane's CA)")
    identity.add_argument("--ca-address", help="HOST:PORT of the CA (its ready file's 'ca')")
    identity.add_argument("--trust-domain", help="SPIFFE trust domain (default cluster.local)")
    identity.add_argument(
        "--token", help="join token (meshctl token create); else $PROXYLESS_MESH_TOKEN at run time"
    )
    identity.add_argument(
        "--credentials-dir",
        help="where the library keeps cert/key/roots for grpcio's xDS (its file_watcher "
        "certificate provider). Default with --ca-address: beside the -o file, its name with "
        "the suffix '.credentials' (bootstrap.json -> bootstrap.credentials/); without -o, "
        "$XDG_CACHE_HOME/proxyless-mesh/credentials/NODE_ID. 'none': no files (native "
        "gRPC channels and grpc.server(xds=True) then cannot do mTLS)",
    )
    p.set_defaults(run=run)


def parse_locality(text: str) -> Locality:
    """ "region/zone/subzone", trailing parts optional: "us-east1/us-east1-b"."""
    parts = text.split("/") if text else []
    if len(parts) > 3:
        raise argparse.ArgumentTypeError(f"expected region/zone/subzone, got {text!r}")
    region, zone, sub_zone = [*parts, "", "", ""][:3]
    return Locality(region=region, zone=zone, sub_zone=sub_zone)


def parse_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_port(text: str) -> tuple[str, int]:
    name, value = parse_pair(text)
    if not value.isdigit() or int(value) > 65535:
        raise argparse.ArgumentTypeError(f"expected NAME=PORT (0-65535), got {text!r}")
    return name, int(value)


def registration_metadata(args: argparse.Namespace) -> dict[str, Any]:
    """Node metadata for labels and self-registration, in the keys
    `Registration.from_bootstrap` and the translator read."""
    meta: dict[str, Any] = {}
    if args.label:
        meta["LABELS"] = dict(args.label)
    if args.workload_name:
        meta["WORKLOAD_NAME"] = args.workload_name
    if args.cluster_id:
        meta["CLUSTER_ID"] = args.cluster_id
    if args.workload_group:
        meta["WORKLOAD_GROUP"] = args.workload_group
        if args.workload_port:
            meta["WORKLOAD_PORTS"] = dict(args.workload_port)
        if args.workload_address:
            meta["WORKLOAD_ADDRESS"] = args.workload_address
    elif args.workload_port or args.workload_address:
        raise ValueError("--workload-port and --workload-address need --workload-group")
    return meta


def credentials_dir(args: argparse.Namespace) -> str | None:
    """Where grpcio's file_watcher reads the workload certificate. On by
    default with an identity, so native channels and xDS servers get mTLS with
    no extra flag: beside the bootstrap (one directory per bootstrap file, an
    absolute path, so it holds wherever the workload's working directory is),
    or per node under the user's cache directory when printing to stdout."""
    if args.credentials_dir is not None:
        return None if args.credentials_dir == "none" else str(args.credentials_dir)
    if not args.ca_address:
        return None
    if args.output is not None:
        return str(args.output.absolute().with_suffix(".credentials"))
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(cache) / "proxyless-mesh" / "credentials" / args.node_id)


def run(args: argparse.Namespace) -> int:
    try:
        metadata = registration_metadata(args)
    except ValueError as exc:
        print(f"meshctl bootstrap: {exc}", file=sys.stderr)
        return 2
    text = make_bootstrap_json(
        metadata=metadata,
        server_uri=args.xds_address,
        node_id=args.node_id,
        namespace=args.namespace,
        service_account=args.service_account,
        cluster=args.cluster,
        locality=args.locality,
        ca_address=args.ca_address,
        trust_domain=args.trust_domain,
        token=args.token,
        credentials_dir=credentials_dir(args),
        ads=args.ads,
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
