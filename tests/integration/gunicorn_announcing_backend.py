"""A WSGI app under a real gunicorn (MeshSyncWorker) bound to 127.0.0.1:0.

    python gunicorn_announcing_backend.py --bootstrap B --group ns/name --version v1 \
        --ready-file F

The gunicorn arbiter runs in this process (gunicorn's BaseApplication, so the
ready-file protocol of meshlab.start_process works), binds 127.0.0.1:0 and forks
one MeshSyncWorker. The worker's Mesh carries `Registration(ports={"http": 0})`:
nothing is registered until the worker announces the port gunicorn bound. The
worker writes the ready file from gunicorn's `post_worker_init` hook, which runs
after `init_process` has waited for that announcement's registration, with the
registered port next to the port its socket is really bound to.

The worker registers the way a user's would: the bootstrap's node metadata
(WORKLOAD_GROUP, WORKLOAD_PORTS {"http": 0}, LABELS, as `meshctl bootstrap
--workload-group ... --workload-port http=0 --label version=v1` writes them)
makes `Mesh.from_bootstrap()` build the Registration itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from backend_support import backend_parser, write_ready
from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

from proxyless_mesh.gunicorn import MeshSyncWorker


def make_wsgi_app(service: str, version: str) -> Any:
    """The same answer as examples/backend.py's ASGI app, in WSGI."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = json.dumps(
            {
                "service": service,
                "version": version,
                "path": environ.get("PATH_INFO", ""),
                "host": environ.get("HTTP_HOST", ""),
            }
        ).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        start_response("200 OK", headers)
        return [body]

    return app


def joining_bootstrap(path: str, group: str, version: str) -> str:
    """A copy of the bootstrap at `path` whose node metadata asks to join `group`
    with the port the server helper announces, labelled with `version`."""
    document = json.loads(Path(path).read_text())
    metadata = document["node"].setdefault("metadata", {})
    metadata.update(WORKLOAD_GROUP=group, WORKLOAD_PORTS={"http": 0}, LABELS={"version": version})
    joined = Path(path).with_suffix(".joining.json")
    joined.write_text(json.dumps(document))
    return str(joined)


class Application(BaseApplication):  # type: ignore[misc]  # gunicorn is untyped
    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.application


def main(args: argparse.Namespace) -> int:
    os.environ["GRPC_XDS_BOOTSTRAP"] = joining_bootstrap(args.bootstrap, args.group, args.version)

    def post_worker_init(worker: Any) -> None:
        # init_process has waited for the announcement's registration by now.
        (registration,) = worker.mesh.registrars  # the one from the bootstrap
        registered = registration.registered_ports or {}
        bound = worker.sockets[0].getsockname()[1]
        write_ready(args.ready_file, {**registered, "bound": bound, "pid": os.getpid()})

    options = {
        "bind": "127.0.0.1:0",
        "workers": 1,
        "worker_class": MeshSyncWorker,
        "graceful_timeout": 5,
        "loglevel": "warning",
        "post_worker_init": post_worker_init,
    }
    Application(make_wsgi_app("reviews", args.version), options).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(backend_parser().parse_args()))
