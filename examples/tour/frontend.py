from collections import Counter

import httpx

from proxyless_mesh import Mesh

with Mesh.from_bootstrap("frontend.json") as mesh:  # a path, or $GRPC_XDS_BOOTSTRAP
    print(mesh.identity)
    client = httpx.Client(transport=mesh.httpx_transport())
    url = "http://reviews.default.mesh:8080/ratings"
    print(client.get(url, headers={"x-user": "jason"}).json())  # always v2
    replies = [client.get(url).json() for _ in range(20)]
    print(Counter(r["version"] for r in replies))  # about 80/20
    print({r["caller"] for r in replies})  # both backends saw this workload's identity
