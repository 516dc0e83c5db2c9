"""The credential files grpcio's native xDS reads (gRFC A29 `file_watcher`).

grpcio cannot take credentials from Python objects for `xds:///` channels and
`grpc.server(xds=True)`; it reads PEM files named in the bootstrap's
`certificate_providers` and re-reads them every `refresh_interval`. The
identity manager rewrites them on every rotation.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from proxyless_mesh.bootstrap import (
    CA_CERTIFICATE_FILE,
    CERTIFICATE_FILE,
    PRIVATE_KEY_FILE,
    file_watcher_provider,
)
from proxyless_mesh.security._credentials import Credentials
from proxyless_mesh.security._files import ensure_private_dir, write_private_file

__all__ = ["CredentialFiles", "file_watcher_provider"]

LOCK_FILE = ".write.lock"


class CredentialFiles:
    """Keeps cert chain, key and roots as 0600 files in a 0700 directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @property
    def certificate_file(self) -> Path:
        return self.directory / CERTIFICATE_FILE

    @property
    def private_key_file(self) -> Path:
        return self.directory / PRIVATE_KEY_FILE

    @property
    def ca_certificate_file(self) -> Path:
        return self.directory / CA_CERTIFICATE_FILE

    @property
    def lock_file(self) -> Path:
        return self.directory / LOCK_FILE

    def write(self, credentials: Credentials) -> None:
        """Roots first (a new root must be trusted before a peer's cert signed
        by it arrives), then key, then chain. grpcio checks the key matches the
        chain and keeps the old pair until both agree, so the window between
        the two renames costs at most one refresh interval.

        Several processes may share one directory (one bootstrap for every
        gunicorn worker, `meshctl bootstrap`'s default): each has its own key,
        so the three writes hold an exclusive lock on the directory's lock
        file, and the last writer's files are the ones left, all of a pair,
        never one process's key beside another's chain."""
        ensure_private_dir(self.directory)
        fd = os.open(self.lock_file, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            write_private_file(self.ca_certificate_file, credentials.roots_pem.encode())
            write_private_file(self.private_key_file, credentials.private_key_pem())
            write_private_file(self.certificate_file, credentials.chain_pem.encode())
        finally:
            os.close(fd)  # releases the lock
