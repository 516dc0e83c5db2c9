"""Client Status Discovery Service (CSDS): what this client holds, as Envoy
and grpcio (gRFC A40, the `grpcio-csds` package) report it.

`client_config()` turns the client's per-resource status into one
`ClientConfig` (a pure function, so the mapping is tested without sockets);
diagnostics' `CsdsServicer` answers `FetchClientStatus` and
`StreamClientStatus` with it (there, so that grpcio loads only with it).
Tools that already speak CSDS (`grpcdebug`, `istioctl`-like scripts, our
`meshctl config-dump --csds`) can read a proxyless-mesh process unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from envoy.admin.v3 import config_dump_shared_pb2 as shared_pb2
from envoy.service.status.v3 import csds_pb2

from proxyless_mesh.xds_client._state import ClientStatus, ResourceStatus

__all__ = ["client_config"]

_CLIENT_STATUS = {
    ClientStatus.REQUESTED: shared_pb2.REQUESTED,
    ClientStatus.DOES_NOT_EXIST: shared_pb2.DOES_NOT_EXIST,
    ClientStatus.ACKED: shared_pb2.ACKED,
    ClientStatus.NACKED: shared_pb2.NACKED,
}


def client_config(node: Any, statuses: Iterable[ResourceStatus]) -> Any:
    """One `envoy.service.status.v3.ClientConfig`: `node` and, per subscribed
    resource, a GenericXdsConfig with the last good resource (`xds_config`),
    its version, the ACK status and, when NACKED, the rejected version and
    why (`error_state`), as grpcio's own CSDS fills them."""
    config = csds_pb2.ClientConfig(node=node)
    for status in statuses:
        entry = config.generic_xds_configs.add(
            type_url=status.type_url,
            name=status.name,
            version_info=status.version,
            client_status=_CLIENT_STATUS[status.status],
        )
        if status.xds_config is not None:
            entry.xds_config.CopyFrom(status.xds_config)
        if status.error is not None:
            entry.error_state.details = status.error
            entry.error_state.version_info = status.error_version or ""
    return config
