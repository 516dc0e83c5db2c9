import asyncio

import httpx

from proxyless_mesh import Mesh


async def main():
    async with Mesh.from_bootstrap("frontend.json") as mesh:
        client = httpx.AsyncClient(transport=mesh.async_httpx_transport())
        response = await client.get("http://reviews.default.mesh:8080/ratings")
        print(response.json())


asyncio.run(main())
