"""A mesh host on a port its service does not have (issue 17): under ALLOW_ANY
the request is passed through, and when DNS does not know the host the caller
gets UnknownServicePortError (NR) naming the host and the ports it has, not
DNS's "Name or service not known"."""

from __future__ import annotations

import socket

import httpx
import pytest

from proxyless_mesh import NoRouteError, UnknownServicePortError
from proxyless_mesh.routing import RouteTable
from proxyless_mesh.runtime import MeshSnapshot, passthrough_failure

HOST = "reviews.default.mesh"


def _failure(cause: OSError) -> httpx.ConnectError:
    """An httpx.ConnectError caused by `cause`, chained as httpx chains it."""
    try:
        try:
            raise cause
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from exc
    except httpx.ConnectError as exc:
        return exc


def _snapshot(*ports: int) -> MeshSnapshot:
    routes = {f"{HOST}:{p}": RouteTable(f"{HOST}:{p}", ()) for p in ports}
    return MeshSnapshot(routes=routes, absent=frozenset({f"{HOST}:9999", "api.example.com:80"}))


def test_a_mesh_host_on_the_wrong_port_names_its_ports() -> None:
    dns = _failure(socket.gaierror(-2, "Name or service not known"))
    request = httpx.Request("GET", f"http://{HOST}:9999/")
    error = passthrough_failure(_snapshot(8080, 8443), f"{HOST}:9999", dns, request)
    assert isinstance(error, UnknownServicePortError)
    assert isinstance(error, NoRouteError) and isinstance(error, httpx.TransportError)
    assert error.response_flag == "NR" and error.request is request
    assert (error.host, error.port, error.mesh_ports) == (HOST, "9999", (8080, 8443))
    assert f"{HOST}:9999" in str(error) and "port(s) 8080, 8443" in str(error)


def test_a_host_this_client_never_used_still_gets_the_typed_error() -> None:
    dns = _failure(socket.gaierror(-2, "Name or service not known"))
    error = passthrough_failure(_snapshot(), f"{HOST}:9999", dns)
    assert isinstance(error, UnknownServicePortError) and error.mesh_ports == ()
    assert f"meshctl describe {HOST}" in str(error)


@pytest.mark.parametrize(
    ("authority", "cause"),
    [
        (f"{HOST}:9999", ConnectionRefusedError(111, "Connection refused")),  # DNS knew it
        (f"{HOST}:8080", socket.gaierror(-2, "Name or service not known")),  # not absent
        ("10.0.0.1:80", socket.gaierror(-2, "Name or service not known")),  # not absent
    ],
)
def test_other_failures_are_left_as_they_are(authority: str, cause: OSError) -> None:
    assert passthrough_failure(_snapshot(8080), authority, _failure(cause)) is None
