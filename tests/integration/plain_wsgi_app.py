"""`app`: the WSGI app of gunicorn_announcing_backend.py as a module attribute,
for the plain `gunicorn -k proxyless_mesh.gunicorn.MeshSyncWorker plain_wsgi_app:app`."""

from gunicorn_announcing_backend import make_wsgi_app

app = make_wsgi_app("reviews", "v1")
