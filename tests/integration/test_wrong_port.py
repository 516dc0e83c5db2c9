"""A mesh host on a port its ServiceEntry does not declare (issue 17), through
httpx with a real control plane and backend: under ALLOW_ANY the request used
to fall through to DNS and fail with "Name or service not known"; now it is
UnknownServicePortError (flag NR) naming the host and its mesh ports, on the
sync and the async transport, while the declared port keeps working."""

from __future__ import annotations

import httpx
import pytest
from meshlab import LocalMesh, service_entry

from proxyless_mesh import Mesh, NoRouteError, UnknownServicePortError

HOST = "reviews.default.mesh"


async def test_a_mesh_host_on_the_wrong_port_is_a_typed_error(lab: LocalMesh) -> None:
    backend = lab.start_http_backend("reviews", "v1")
    lab.write_config(
        "reviews.yaml",
        service_entry(HOST, 8080, [("127.0.0.1", backend.ready["port"], {"version": "v1"})]),
    )
    lab.start_control_plane()
    async with Mesh.from_bootstrap(lab.bootstrap("c")) as mesh:
        async with httpx.AsyncClient(transport=mesh.async_httpx_transport()) as client:
            with pytest.raises(UnknownServicePortError) as fresh:
                await client.get(f"http://{HOST}:9999/")  # before this client used the host
            assert fresh.value.mesh_ports == ()
            assert (await client.get(f"http://{HOST}:8080/")).json()["version"] == "v1"
            with pytest.raises(UnknownServicePortError) as caught:
                await client.get(f"http://{HOST}:9999/")
        assert caught.value.mesh_ports == (8080,) and caught.value.response_flag == "NR"
        assert f"{HOST}:9999" in str(caught.value) and "port(s) 8080" in str(caught.value)
        # The sync transport too (the authority is known: no resolving on this loop).
        sync_client = httpx.Client(transport=mesh.httpx_transport())
        with sync_client, pytest.raises(NoRouteError, match="port\\(s\\) 8080"):
            sync_client.get(f"http://{HOST}:9999/")
