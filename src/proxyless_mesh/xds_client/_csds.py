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

from proxyless_mesh.xds_client._state import ClientStatus, ResourceStatus

__all__ = ["client_config"]

# envoy.admin.v3.ClientResourceStatus numbers
_CLIENT_STATUS = {
    ClientStatus.REQUESTED: 1,
    ClientStatus.DOES_NOT_EXIST: 2,
    ClientStatus.ACKED: 3,
    ClientStatus.NACKED: 4,
}


def client_config(node: Any, statuses: Iterable[ResourceStatus]) -> Any:
    """One `envoy.service.status.v3.ClientConfig`: `node` and, per subscribed
    resource, a GenericXdsConfig with the last good resource (`xds_config`),
    its version, the ACK status and, when NACKED, the rejected version and
    why (`error_state`), as grpcio's own CSDS fills them. (Protobuf loads
    here: only a process serving CSDS pays for it.)"""
    from envoy.service.status.v3 import csds_pb2

    config = csds_pb2.ClientConfig(node=node)
    for status in statuses:
        entry = config.generic_xds_configs.add(
            type_url=status.type_url,
            name=status.name,
            version_info=status.version,
            client_status=_CLIENT_STATUS[status.status],
        )
        if status.xds_config is not None:  # an Any: its type_url and value
            entry.xds_config.type_url = status.xds_config.type_url
            entry.xds_config.value = status.xds_config.value
        if status.error is not None:
            entry.error_state.details = status.error
            entry.error_state.version_info = status.error_version or ""
    return config
