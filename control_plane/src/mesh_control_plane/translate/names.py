"""Resource names: the contract between the resources and with the clients.

Clients ask for these names (a gRPC channel to ``xds:///reviews.mesh:8080`` asks for
the listener ``reviews.mesh:8080``), and resources refer to one another by them, so
they are built in this one place.
"""

from __future__ import annotations

ENVOY_OUTBOUND = "virtualOutbound"
"""Name of Envoy's single outbound listener and of its route configuration (Istio's)."""

DEFAULT_ROUTE_NAME = "default"
"""Name of the catch-all route sent when no VirtualService routes a host (Istio's)."""


def authority(host: str, port: int) -> str:
    """``<host>:<port>``: the listener, route configuration and virtual host name
    (an IPv6 address in brackets, as in a URL)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cluster_name(host: str, port: int, subset: str = "") -> str:
    """Istio's cluster name: ``outbound|<port>|<subset>|<host>``.

    Keeping Istio's form lets people read our config dumps with what they know, and
    the subset slot is simply empty for the whole service.
    """
    return f"outbound|{port}|{subset}|{host}"


def route_name(namespace: str, vs_name: str, http_name: str, index: int) -> str:
    """``<vs-namespace>/<vs-name>/<http name or index>``: says which rule matched."""
    return f"{namespace}/{vs_name}/{http_name or index}"


SERVER_LISTENER_TEMPLATE = "grpc/server?xds.resource.listening_address=%s"
"""The bootstrap's ``server_listener_resource_name_template`` that ``meshctl
bootstrap`` (the library's writer) puts in every bootstrap: gRPC servers and
the library ask for their inbound listener by it (gRFC A36)."""


def server_listener_name(ip: str, port: int) -> str:
    """The inbound listener name for a server listening on ``ip:port``, with
    IPv6 addresses in brackets as gRPC writes them (``[::]:8080``)."""
    host = f"[{ip}]" if ":" in ip else ip
    return SERVER_LISTENER_TEMPLATE % f"{host}:{port}"
