"""The CA accepts Kubernetes ServiceAccount tokens, checked by the real API
server's TokenReview (tests/kube.py): the right SPIFFE ID for a good token; a token
for another audience, an expired one, or one whose ServiceAccount was deleted is
refused, and a join token still works beside them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from kube import KubeCluster
from mesh_control_plane.ca import (
    CaServer,
    CaSettings,
    CertificateAuthority,
    CertificateService,
    TokenAuthority,
)
from mesh_control_plane.kube.client import connection_from
from mesh_control_plane.kube.reflector import Reflectors
from mesh_control_plane.kube.tokenreview import TokenReviewer

from proxyless_mesh.errors import TokenRejectedError
from proxyless_mesh.security import CaClient, Certificate, SpiffeId, make_csr, new_private_key

NS = "identity"
AUDIENCE = "proxyless-mesh"
DELETED_LIMIT = 20.0  # seconds: the API server's token cache (10 s) plus slack
REVIEWS = SpiffeId("cluster.local", NS, "reviews")


@pytest.fixture(scope="module")
def accounts(kube: KubeCluster) -> Iterator[httpx.Client]:
    kube.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        *(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": n, "namespace": NS}}
            for n in ("reviews", "leaving")
        ),
    )
    with kube.client() as api:
        yield api


def token_for(api: httpx.Client, account: str, audience: str) -> str:
    """A token from the TokenRequest API, as the kubelet gets a projected one."""
    response = api.post(
        f"/api/v1/namespaces/{NS}/serviceaccounts/{account}/token",
        json={"spec": {"audiences": [audience], "expirationSeconds": 600}},
    )
    assert response.is_success, response.text
    return str(response.json()["status"]["token"])


@pytest.fixture
async def ca(kube: KubeCluster, tmp_path: Path) -> AsyncIterator[tuple[CaClient, TokenAuthority]]:
    settings = CaSettings(tmp_path / "ca", leaf_ttl=3600)
    tokens = TokenAuthority.open(settings.ca_dir)
    watching = Reflectors(connection_from(str(kube.kubeconfig)), ())
    await watching.start()
    reviewer = TokenReviewer(watching, "cluster.local", AUDIENCE)
    server = CaServer(
        CertificateService(CertificateAuthority.open(settings), tokens, reviewer.review)
    )
    client = CaClient(f"127.0.0.1:{await server.start('127.0.0.1:0')}")
    try:
        yield client, tokens
    finally:
        await client.close()
        await server.stop(0)
        await watching.stop()


async def identity_of(client: CaClient, identity: SpiffeId, token: str) -> str:
    signed = await client.create_certificate(make_csr(new_private_key(), identity), 0, token=token)
    return Certificate.from_pem(signed.cert_chain[0]).spiffe_id


async def refusal(client: CaClient, identity: SpiffeId, token: str) -> TokenRejectedError:
    with pytest.raises(TokenRejectedError) as info:
        await identity_of(client, identity, token)
    return info.value


async def test_a_service_account_token_gets_its_spiffe_id(
    ca: tuple[CaClient, TokenAuthority], accounts: httpx.Client
) -> None:
    client, tokens = ca
    token = token_for(accounts, "reviews", AUDIENCE)
    assert (
        await identity_of(client, REVIEWS, token) == "spiffe://cluster.local/ns/identity/sa/reviews"
    )
    err = await refusal(client, SpiffeId("cluster.local", NS, "admin"), token)
    assert err.code == "PERMISSION_DENIED"  # the token proves reviews, nothing else
    join = tokens.mint(REVIEWS, 600)  # join tokens (VMs) still work beside them
    assert await identity_of(client, REVIEWS, join) == REVIEWS.uri


async def test_a_token_for_another_audience_is_refused(
    ca: tuple[CaClient, TokenAuthority], accounts: httpx.Client
) -> None:
    client, _ = ca
    err = await refusal(client, REVIEWS, token_for(accounts, "reviews", "some-other-service"))
    assert err.code == "UNAUTHENTICATED"
    assert "Kubernetes" in err.reason, err.reason


async def test_an_expired_token_is_refused(
    ca: tuple[CaClient, TokenAuthority], accounts: httpx.Client, kube: KubeCluster
) -> None:
    """The TokenRequest API will not issue a token shorter than 10 minutes: this one
    is signed with the cluster's ServiceAccount key (the test made it), exactly as
    the API server would, but it expired a minute ago."""
    client, _ = ca
    account = accounts.get(f"/api/v1/namespaces/{NS}/serviceaccounts/reviews").json()
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": f"system:serviceaccount:{NS}:reviews",
        "aud": [AUDIENCE],
        "iat": now - 700,
        "nbf": now - 700,
        "exp": now - 60,
        "kubernetes.io": {
            "namespace": NS,
            "serviceaccount": {"name": "reviews", "uid": account["metadata"]["uid"]},
        },
    }
    expired = jwt.encode(claims, (kube.pki / "sa.key").read_bytes(), algorithm="RS256")
    claims["exp"] = now + 600  # the same token, not expired: accepted (the test is sound)
    fresh = jwt.encode(claims, (kube.pki / "sa.key").read_bytes(), algorithm="RS256")
    assert await identity_of(client, REVIEWS, fresh) == REVIEWS.uri
    err = await refusal(client, REVIEWS, expired)
    assert err.code == "UNAUTHENTICATED"


async def test_a_token_of_a_deleted_service_account_is_refused(
    ca: tuple[CaClient, TokenAuthority], accounts: httpx.Client
) -> None:
    client, _ = ca
    leaving = SpiffeId("cluster.local", NS, "leaving")
    token = token_for(accounts, "leaving", AUDIENCE)
    assert await identity_of(client, leaving, token) == leaving.uri
    response = accounts.delete(f"/api/v1/namespaces/{NS}/serviceaccounts/leaving")
    assert response.is_success, response.text
    # The API server caches a successful token authentication for 10 s: the
    # refusal comes within that (bounded here at DELETED_LIMIT).
    deadline = time.monotonic() + DELETED_LIMIT
    while True:
        try:
            await identity_of(client, leaving, token)
        except TokenRejectedError as err:
            assert err.code == "UNAUTHENTICATED"
            break
        assert time.monotonic() < deadline, "a deleted ServiceAccount's token still accepted"
        await asyncio.sleep(0.5)
