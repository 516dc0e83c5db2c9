"""reviews v2: a plain WSGI app (a Flask app plugs in the same way)."""

import json

from proxyless_mesh import peer_identity


def app(environ, start_response):
    body = json.dumps({"version": "v2", "caller": peer_identity(environ)}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
