"""Transport security of native-mode gRPC channels, decided when one is made.

Native mode (`native=True`): grpcio's own xDS client reads the cluster's
UpstreamTlsContext and verifies the server's SPIFFE ID itself, but only on a
channel made with `xds_channel_credentials` (an insecure channel ignores the
TLS config), and only when its bootstrap names the `certificate_providers`
the cluster refers to. So a mesh with an identity gets xDS credentials
(plaintext fallback for clusters without TLS), and a bootstrap without
providers is refused here by name rather than by grpcio's "unrecognized
certificate provider instance name" on the first call.

Library mode speaks mTLS through its own in-process TLS bridge
(`_grpc_tls_bridge`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
import grpc.experimental

from proxyless_mesh.errors import MeshError

__all__ = ["native_channel"]


def native_channel(
    xds_target: str,
    options: Sequence[tuple[str, Any]],
    *,
    mtls: bool,
    certificate_providers: object,
    aio: bool = False,
) -> Any:
    """grpcio's `xds:///` channel: with xDS credentials when the mesh has an
    identity (`mtls`; mTLS where the cluster says so), insecure otherwise.
    `certificate_providers` is the bootstrap's (refused by name when empty)."""
    module: Any = grpc.aio if aio else grpc
    if not mtls:
        return module.insecure_channel(xds_target, options=options)
    if not certificate_providers:
        raise MeshError(
            "native mTLS needs the bootstrap's 'certificate_providers' (grpcio reads the "
            "workload certificate from files): write the bootstrap with `meshctl bootstrap "
            "--ca-address ...` (it names a credentials directory by default) or pass "
            "--credentials-dir DIR"
        )
    fallback = grpc.experimental.insecure_channel_credentials()  # type: ignore[no-untyped-call]
    credentials = grpc.xds_channel_credentials(fallback)
    return module.secure_channel(xds_target, credentials, options=options)
