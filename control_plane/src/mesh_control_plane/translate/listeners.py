"""LDS: the entry points clients look up.

Proxyless clients (gRPC, our library) get one API listener per service port, named
``<host>:<port>`` because that is the name they ask for: it carries only an
HttpConnectionManager pointing at the route configuration of the same name. Envoy, a
real proxy, gets one socket listener, Istio's ``virtualOutbound``, whose routes cover
every service.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from mesh_control_plane.translate.names import ENVOY_OUTBOUND
from mesh_control_plane.translate.protos import HCM_FILTER, pack, rds_connection_manager

OUTBOUND_ADDRESS = "127.0.0.1"
OUTBOUND_STAT_PREFIX = "outbound"


def api_listener(name: str) -> listener_pb2.Listener:
    """A gRPC-style client listener whose routes come from RDS under the same name.

    No address, no filter chains: gRPC reads only ``api_listener`` here.
    """
    return listener_pb2.Listener(
        name=name,
        api_listener=api_listener_pb2.ApiListener(api_listener=pack(rds_connection_manager(name))),
    )


def envoy_outbound_listener(
    port: int, extra_filters: Sequence[hcm_pb2.HttpFilter] = ()
) -> listener_pb2.Listener:
    """Envoy's outbound listener on 127.0.0.1:<port>, routing by Host via RDS;
    `extra_filters` go before the connection manager's own."""
    manager = rds_connection_manager(ENVOY_OUTBOUND, stat_prefix=OUTBOUND_STAT_PREFIX)
    own = list(manager.http_filters)
    del manager.http_filters[:]
    manager.http_filters.extend([*extra_filters, *own])
    return listener_pb2.Listener(
        name=ENVOY_OUTBOUND,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=OUTBOUND_ADDRESS, port_value=port)
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(name=HCM_FILTER, typed_config=pack(manager))
                ]
            )
        ],
    )
