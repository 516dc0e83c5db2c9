"""reviews v1: a plain ASGI app (FastAPI/Starlette apps plug in the same way)."""

import asyncio
import json

from proxyless_mesh import Mesh, peer_identity
from proxyless_mesh.serving import serve_asgi  # extra: proxyless-mesh[serve]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps({"version": "v1", "caller": peer_identity(scope)}).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def main():
    async with Mesh.from_bootstrap("reviews-v1.json") as mesh:
        await serve_asgi(app, mesh, host="127.0.0.1", port=9081)  # mTLS per PeerAuthentication


asyncio.run(main())
