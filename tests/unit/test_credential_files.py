"""grpcio's credential files: processes sharing one directory (one bootstrap
for several workers) never leave one's key beside another's chain."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from identity_support import as_certificates
from mesh_control_plane.ca import CaSettings, CertificateAuthority

from proxyless_mesh.security import (
    CredentialFiles,
    Credentials,
    SpiffeId,
    make_csr,
    new_private_key,
)

WORKER = SpiffeId("cluster.local", "default", "web")
BLOCKED = 0.3  # seconds a writer is given to (wrongly) get past a held lock


def issue(ca: CertificateAuthority) -> Credentials:
    key = new_private_key()
    csr = x509.load_pem_x509_csr(make_csr(key, WORKER).encode())
    chain = ca.sign(csr, WORKER.uri, 600)
    return Credentials(
        key, as_certificates(chain[:-1]), as_certificates(ca.trust_bundle()), fetched_at=0.0
    )


def pair_matches(files: CredentialFiles) -> bool:
    key = serialization.load_pem_private_key(files.private_key_file.read_bytes(), None)
    leaf = x509.load_pem_x509_certificates(files.certificate_file.read_bytes())[0]
    return key.public_key().public_numbers() == leaf.public_key().public_numbers()  # type: ignore[union-attr]


def test_a_writer_waits_for_the_lock_and_leaves_a_whole_pair(tmp_path: Path) -> None:
    ca = CertificateAuthority.open(CaSettings(tmp_path / "ca"))
    files = CredentialFiles(tmp_path / "certs")
    files.write(issue(ca))
    assert pair_matches(files) and files.lock_file.exists()
    first = files.certificate_file.read_bytes()

    # Another process is between its key and its chain: hold its lock.
    fd = os.open(files.lock_file, os.O_WRONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    writer = threading.Thread(target=files.write, args=(issue(ca),))
    writer.start()
    writer.join(BLOCKED)
    try:
        assert writer.is_alive(), "wrote while another writer held the directory"
        assert files.certificate_file.read_bytes() == first
    finally:
        os.close(fd)
    writer.join(10)
    assert not writer.is_alive()
    assert files.certificate_file.read_bytes() != first and pair_matches(files)
