"""`meshctl install`: the CustomResourceDefinitions of the supported Istio kinds
(kube/crds.py), applied to a cluster (server-side apply) or printed as YAML.

CRDs of the same names that this tool did not install (Istio's own) are left alone
unless `--force`: they describe the same resources, and the control plane reads
them either way.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import httpx
import yaml

from mesh_control_plane.kube.client import KubeConfigError, connection_from
from mesh_control_plane.kube.crds import FIELD_MANAGER, crds

_CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
ESTABLISHED_TIMEOUT = 60.0


def add_parser(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser(
        "install", help="install the CRDs of the supported Istio kinds into a cluster"
    )
    p.add_argument(
        "--kubeconfig",
        default="",
        help="the cluster: a kubeconfig path, or 'in-cluster' (default: $KUBECONFIG)",
    )
    p.add_argument("--print", action="store_true", help="print the CRDs as YAML, apply nothing")
    p.add_argument(
        "--force", action="store_true", help="take over CRDs of the same names installed by others"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.print:
        sys.stdout.write(yaml.safe_dump_all(crds(), sort_keys=False))
        return 0
    kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG", "")
    if not kubeconfig:
        print("meshctl install: --kubeconfig (or $KUBECONFIG) is required", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_install(kubeconfig, args.force))
    except KubeConfigError as exc:
        print(f"meshctl install: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"meshctl install: {exc}", file=sys.stderr)
        return 1


async def _install(kubeconfig: str, force: bool) -> int:
    async with connection_from(kubeconfig).async_client() as client:
        applied = []
        for definition in crds():
            name = definition["metadata"]["name"]
            existing = await client.get(f"{_CRD_PATH}/{name}")
            if existing.is_success and not force:
                labels = existing.json()["metadata"].get("labels") or {}
                if labels.get("app.kubernetes.io/managed-by") != FIELD_MANAGER:
                    print(f"{name}: installed by someone else, left alone (--force takes it over)")
                    continue
            response = await client.patch(
                f"{_CRD_PATH}/{name}",
                content=yaml.safe_dump(definition).encode(),
                headers={"Content-Type": "application/apply-patch+yaml"},
                params={"fieldManager": FIELD_MANAGER, "force": "true"},
            )
            if not response.is_success:
                print(f"{name}: {response.status_code} {response.text}", file=sys.stderr)
                return 1
            applied.append(name)
        deadline = time.monotonic() + ESTABLISHED_TIMEOUT
        for name in applied:
            while not await _established(client, name):
                if time.monotonic() > deadline:
                    print(
                        f"{name}: not established in {ESTABLISHED_TIMEOUT:.0f} s", file=sys.stderr
                    )
                    return 1
                await asyncio.sleep(0.2)
            print(f"{name}: established")
    return 0


async def _established(client: httpx.AsyncClient, name: str) -> bool:
    response = await client.get(f"{_CRD_PATH}/{name}")
    response.raise_for_status()
    conditions = (response.json().get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
