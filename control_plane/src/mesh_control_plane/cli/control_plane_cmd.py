"""`meshctl control-plane`: serve a config directory over ADS until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mesh_control_plane.app import Addresses, serve
from mesh_control_plane.ca import CaError, CaSettings, default_ca_dir, parse_duration
from mesh_control_plane.config import DEFAULT_ROOT_NAMESPACE, MeshSettings
from mesh_control_plane.kube.client import KubeConfigError
from mesh_control_plane.registry.consul import ConsulSettings
from mesh_control_plane.registry.hub import DEFAULT_DEBOUNCE
from mesh_control_plane.registry.kubernetes import KubernetesSettings
from mesh_control_plane.registry.runtime import RegistrySettings
from mesh_control_plane.xds.server import DEFAULT_XDS_ENGINE, XDS_ENGINES
from mesh_control_plane.xds.tuning import tune_gc
from proxyless_mesh.security import DEFAULT_TRUST_DOMAIN


def add_parser(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser(
        "control-plane", help="serve Istio YAML from a directory as xDS (ADS)"
    )
    p.add_argument("--config-dir", type=Path, required=True, help="directory of Istio YAML")
    p.add_argument("--xds-address", default="127.0.0.1:15010", help="HOST:PORT for ADS")
    p.add_argument("--admin-address", default="127.0.0.1:15014", help="HOST:PORT for admin")
    p.add_argument(
        "--ready-file",
        type=Path,
        help='once listening, write {"xds": ..., "admin": ...} here (atomically)',
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument(
        "--xds-workers",
        type=int,
        default=1,
        help="processes serving ADS on the xDS port (SO_REUSEPORT); 1: this process alone",
    )
    p.add_argument(
        "--xds-engine",
        choices=XDS_ENGINES,
        default=DEFAULT_XDS_ENGINE,
        help="the xDS port's transport: grpc (grpc.aio) or native (Rust: HTTP/2 and gRPC "
        "framing off the event loop; the xDS logic is the same); default: $MESH_XDS_ENGINE, "
        "else native when built, else grpc",
    )
    p.add_argument(
        "--root-namespace",
        default=DEFAULT_ROOT_NAMESPACE,
        help="security policies here without a selector apply mesh-wide (Istio's istio-system)",
    )
    p.add_argument(
        "--domain",
        default=DEFAULT_TRUST_DOMAIN,
        help="DNS domain suffix (istiod's --domain): a short host `reviews` in a "
        "VirtualService or DestinationRule means reviews.<namespace>.svc.<domain>",
    )
    p.add_argument(
        "--path-normalization",
        default="BASE",
        choices=("BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"),
        help="Istio's pathNormalization, applied before inbound authorization",
    )
    p.add_argument(
        "--outbound-traffic-policy",
        default=None,
        choices=("ALLOW_ANY", "REGISTRY_ONLY"),
        help="Istio's mesh-wide outboundTrafficPolicy.mode, for hosts outside the mesh "
        "(a Sidecar's overrides it); unset: the istio ConfigMap's, else Envoy ALLOW_ANY "
        "and library clients their own",
    )
    p.add_argument(
        "--prometheus-url",
        default="",
        help="a Prometheus scraping the workloads (http://HOST:9090): the console's "
        "service graph (/console/graph on the admin port) reads Istio's metrics from it",
    )
    _add_ca_arguments(p)
    _add_registry_arguments(p)
    p.set_defaults(run=run)


def _add_registry_arguments(p: argparse.ArgumentParser) -> None:
    reg = p.add_argument_group("service registries")
    reg.add_argument(
        "--workload-groups-dir",
        type=Path,
        help="more WorkloadGroup YAML (other kinds skipped; kept for compatibility: groups "
        "belong in --config-dir now, which wins for the same namespace/name)",
    )
    reg.add_argument(
        "--registration-grace",
        type=_duration,
        default=None,
        help="how long a self-registered workload whose stream dropped is kept (e.g. 30s)",
    )
    reg.add_argument("--consul-address", help="watch this Consul (scheme://host:port)")
    reg.add_argument("--consul-token", default="", help="Consul ACL token")
    reg.add_argument("--consul-datacenter", default="")
    reg.add_argument("--consul-ca-file", default="", help="trust this CA for Consul's TLS")
    reg.add_argument(
        "--consul-host-suffix", default=".service.consul", help="mesh host = <service><suffix>"
    )
    reg.add_argument(
        "--kubeconfig",
        default="",
        help="watch Kubernetes Services/EndpointSlices/Pods through this kubeconfig "
        "(its current context), or 'in-cluster' for the Pod's ServiceAccount",
    )
    reg.add_argument(
        "--kube-token-audience",
        default="proxyless-mesh",
        help="with --kubeconfig: the CA accepts ServiceAccount tokens for this audience "
        "(checked by the API server's TokenReview)",
    )
    reg.add_argument(
        "--ca-secret",
        default="",
        help="with --kubeconfig: NAMESPACE/NAME of a Secret holding the CA's files, shared "
        "by all replicas (created from this CA directory when missing)",
    )
    reg.add_argument(
        "--leader-lease",
        default="",
        help="with --kubeconfig: NAMESPACE/NAME of the Lease electing the replica that "
        "writes status (default: the kubeconfig's namespace/proxyless-mesh-control-plane)",
    )
    reg.add_argument(
        "--lease-duration",
        type=_duration,
        default=15.0,
        help="how long a silent leader keeps the Lease (e.g. 15s)",
    )
    reg.add_argument(
        "--no-kube-resources",
        action="store_true",
        help="with --kubeconfig: do not read Istio configuration from custom resources "
        "(the config directory only; see `meshctl install`)",
    )
    reg.add_argument(
        "--kube-namespace",
        action="append",
        default=[],
        help="serve only Services of this namespace (repeatable; default: all)",
    )
    reg.add_argument(
        "--registry-debounce",
        type=_duration,
        default=DEFAULT_DEBOUNCE,
        help="registry changes within this time of the first are pushed together, e.g. 0.1s "
        "(the default, as istiod's PILOT_DEBOUNCE_AFTER; 0s: push each at once)",
    )


def registry_settings(args: argparse.Namespace) -> RegistrySettings:
    consul = None
    if args.consul_address:
        consul = ConsulSettings(
            address=args.consul_address,
            token=args.consul_token,
            datacenter=args.consul_datacenter,
            ca_file=args.consul_ca_file,
            host_suffix=args.consul_host_suffix,
        )
    kubernetes = KubernetesSettings(
        domain=args.domain,
        namespaces=tuple(args.kube_namespace),
        token_audience=args.kube_token_audience,
    )
    settings = RegistrySettings(
        workload_groups_dir=args.workload_groups_dir,
        consul=consul,
        kubeconfig=args.kubeconfig,
        kubernetes=kubernetes,
        kube_resources=not args.no_kube_resources,
        ca_secret=args.ca_secret,
        leader_lease=args.leader_lease,
        lease_duration=args.lease_duration,
        debounce=args.registry_debounce,
    )
    if args.registration_grace is not None:
        settings = dataclasses.replace(settings, grace=args.registration_grace)
    return settings


def _add_ca_arguments(p: argparse.ArgumentParser) -> None:
    ca = p.add_argument_group("certificate authority")
    ca.add_argument(
        "--ca-address",
        help="HOST:PORT for the CA (default: --xds-address's host, port 15012; a free port "
        "when --xds-address's port is 0)",
    )
    ca.add_argument(
        "--ca-dir",
        type=Path,
        help="CA state: generated roots and the token key, 0700 dir / 0600 files "
        "(default: $MESHCTL_CA_DIR, else mesh-ca/ beside --config-dir)",
    )
    ca.add_argument("--ca-cert", type=Path, help="your own root or intermediate (PEM)")
    ca.add_argument("--ca-key", type=Path, help="the key of --ca-cert (PEM)")
    ca.add_argument("--ca-chain", type=Path, help="intermediates up to the root (PEM)")
    ca.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    ca.add_argument(
        "--leaf-ttl", default="24h", type=_duration, help="workload certificate lifetime (max)"
    )
    ca.add_argument(
        "--root-ttl",
        default="87600h",
        type=_duration,
        help="a generated root's lifetime (default 10 years)",
    )
    ca.add_argument(
        "--root-rotation-lead",
        type=_duration,
        help="make the root's successor this long before the root expires (default: 20%% "
        "of --root-ttl; at least twice --leaf-ttl); with --ca-secret the leader does",
    )


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def ca_address(args: argparse.Namespace) -> str:
    if args.ca_address:
        return str(args.ca_address)
    host, _, port = str(args.xds_address).rpartition(":")
    return f"{host}:{0 if port == '0' else 15012}"


def ca_settings(args: argparse.Namespace) -> CaSettings:
    return CaSettings(
        ca_dir=args.ca_dir or default_ca_dir(args.config_dir),
        trust_domain=args.trust_domain,
        leaf_ttl=args.leaf_ttl,
        root_ttl=args.root_ttl,
        root_rotation_lead=args.root_rotation_lead,
        ca_cert=args.ca_cert,
        ca_key=args.ca_key,
        ca_chain=args.ca_chain,
    )


def write_ready_file(path: Path, addresses: Addresses) -> None:
    """Write then rename, so a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    doc = {"xds": addresses.xds, "admin": addresses.admin}
    if addresses.ca:
        doc["ca"] = addresses.ca
    tmp.write_text(json.dumps(doc) + "\n")
    tmp.replace(path)


def print_config_errors(problems: Sequence[str]) -> None:
    for problem in problems:
        print(f"config error: {problem}", file=sys.stderr, flush=True)


async def _run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def ready(addresses: Addresses) -> None:
        if args.ready_file is not None:
            write_ready_file(args.ready_file, addresses)

    await serve(
        args.config_dir,
        xds_address=args.xds_address,
        admin_address=args.admin_address,
        stop=stop,
        on_ready=ready,
        on_config_error=print_config_errors,
        ca=ca_settings(args),
        ca_address=ca_address(args),
        registry=registry_settings(args),
        settings=MeshSettings(
            trust_domain=args.trust_domain,
            root_namespace=args.root_namespace,
            path_normalization=args.path_normalization,
            domain=args.domain,
            outbound_policy=args.outbound_traffic_policy,
        ),
        prometheus_url=args.prometheus_url,
        xds_workers=args.xds_workers,
        xds_engine=args.xds_engine,
        worker_log_level=args.log_level,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.config_dir.is_dir():
        print(f"meshctl: --config-dir {args.config_dir} is not a directory", file=sys.stderr)
        return 2
    tune_gc()  # the control plane's own process: pushes at scale, ~30 % less CPU
    try:
        asyncio.run(_run(args))
    except CaError as exc:
        print(f"meshctl: CA: {exc}", file=sys.stderr)
        return 1
    except KubeConfigError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"meshctl: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0
