"""Root rotation shared by replicas through the CA Secret, on a real API server:
a root rotated at one replica reaches the other (its trust bundle, then its
signing root once the rotation's propagation time has passed); two replicas
rotating together do not overwrite each other: the second update is refused
(409) and that replica takes the first one's root; a rotation whose update failed
is written at the next poll."""

from __future__ import annotations

from pathlib import Path

from kube import KubeCluster
from mesh_control_plane.ca import CaSettings
from mesh_control_plane.ca.authority import CertificateAuthority
from mesh_control_plane.ca.tokens import TokenAuthority
from mesh_control_plane.kube.ca_secret import CaSecretSync, share_ca_dir
from mesh_control_plane.kube.client import connection_from

NS = "ca-rotation"


def replica(
    kube: KubeCluster, ca_dir: Path, secret: str
) -> tuple[CertificateAuthority, CaSecretSync]:
    settings = CaSettings(ca_dir=ca_dir)
    connection = connection_from(str(kube.kubeconfig))
    share_ca_dir(
        connection,
        secret,
        ca_dir,
        lambda: (CertificateAuthority.open(settings), TokenAuthority.open(ca_dir)),
    )
    authority = CertificateAuthority.open(settings)
    return authority, CaSecretSync(connection, secret, ca_dir, authority.reload)


def two_replicas(
    kube: KubeCluster, tmp_path: Path, name: str
) -> tuple[tuple[CertificateAuthority, CaSecretSync], tuple[CertificateAuthority, CaSecretSync]]:
    """Replicas a and b sharing the Secret NS/name (a creates it, b loads it)."""
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    secret = f"{NS}/{name}"
    return replica(kube, tmp_path / "a", secret), replica(kube, tmp_path / "b", secret)


def root_ids(authority: CertificateAuthority) -> list[str]:
    return sorted(r.id for r in authority.roots())


async def test_a_rotation_at_one_replica_reaches_the_other(
    kube: KubeCluster, tmp_path: Path
) -> None:
    (a, sync_a), (b, sync_b) = two_replicas(kube, tmp_path, "mesh-ca-shared")
    assert root_ids(a) == root_ids(b)
    assert not await sync_b.poll(), "nothing new yet"

    new = a.rotate_root()
    assert await sync_a.publish()
    assert await sync_b.poll()
    assert root_ids(b) == root_ids(a) and new.id in root_ids(b)
    assert [c.serial_number for c in b.trust_bundle()] == [
        c.serial_number for c in a.trust_bundle()
    ]
    assert not await sync_b.poll(), "taken once"


async def test_two_replicas_rotating_together_end_with_one_root(
    kube: KubeCluster, tmp_path: Path
) -> None:
    (a, sync_a), (b, sync_b) = two_replicas(kube, tmp_path, "mesh-ca-race")
    first = a.rotate_root()
    second = b.rotate_root()
    assert await sync_a.publish()
    assert not await sync_b.publish(), "a rotated first: b's rotation must not overwrite it"
    assert await sync_b.poll()
    assert first.id in root_ids(b) and second.id not in root_ids(b)
    assert root_ids(a) == root_ids(b)
    assert not list((tmp_path / "b").glob(f"root-{second.id}.*")), "the lost root's files go"


async def test_a_rotation_whose_update_failed_is_published_at_the_next_poll(
    kube: KubeCluster, tmp_path: Path
) -> None:
    """The leader rotated but its update of the Secret did not happen (the API
    server was away): its next poll writes it, and the other replica takes it."""
    (a, sync_a), (b, sync_b) = two_replicas(kube, tmp_path, "mesh-ca-retry")
    new = a.rotate_root()  # no publish: as if it had failed
    assert not await sync_b.poll(), "nothing in the Secret yet"
    assert not await sync_a.poll(), "a takes nothing: it publishes its root"
    assert await sync_b.poll()
    assert new.id in root_ids(b) and root_ids(a) == root_ids(b)
