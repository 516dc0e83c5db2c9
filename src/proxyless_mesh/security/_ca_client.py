"""The gRPC client of the control plane's certificate service.

Sends a CSR with proof of who we are (a join token, or for renewal the current
chain and a signature by the current key over the new CSR) and returns the
chain and trust bundle. Refusals become TokenRejectedError, everything else
CertificateAuthorityUnavailableError, so the renewal loop knows whether retrying
can help.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from proxyless_mesh import ca_wire
from proxyless_mesh.errors import CertificateAuthorityUnavailableError, TokenRejectedError
from proxyless_mesh.security._credentials import Credentials

__all__ = ["CaClient", "SignedChain"]

_REFUSALS = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)


@dataclass(frozen=True)
class SignedChain:
    """What the CA answered: PEM chain (leaf first, root last) and the roots
    it currently trusts (PEM; empty from a CA without the bundle extension)."""

    cert_chain: tuple[str, ...]
    trust_bundle: tuple[str, ...]


class CaClient:
    """One grpc.aio channel to the CA, opened on first use on the running loop."""

    def __init__(self, address: str, *, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None

    async def create_certificate(
        self,
        csr_pem: str,
        validity_seconds: int = 0,
        *,
        token: str | None = None,
        renewal: Credentials | None = None,
    ) -> SignedChain:
        """Ask for `csr_pem` to be signed. Exactly one of `token` / `renewal`
        authenticates the call; `validity_seconds` 0 means the CA's default."""
        metadata: tuple[tuple[str, str | bytes], ...]
        if token is not None and renewal is None:
            metadata = ((ca_wire.AUTHORIZATION, f"Bearer {token}"),)
        elif renewal is not None and token is None:
            proof = renewal.key.sign(ca_wire.renewal_payload(csr_pem), ec.ECDSA(hashes.SHA256()))
            metadata = (
                (ca_wire.RENEWAL_CHAIN, renewal.chain_pem.encode()),
                (ca_wire.RENEWAL_PROOF, proof),
            )
        else:
            raise ValueError("authenticate with exactly one of token or renewal")
        request = ca_wire.CertificateRequest(csr=csr_pem, validity_duration=validity_seconds)
        call = self._get_channel().unary_unary(
            ca_wire.CREATE_CERTIFICATE,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=ca_wire.CertificateResponse.FromString,
        )
        try:
            response = await call(request, metadata=metadata, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code in _REFUSALS:
                raise TokenRejectedError(
                    f"the CA at {self.address} refused to sign: {code.name}: {details}",
                    code=code.name,
                    reason=details,
                ) from None
            raise CertificateAuthorityUnavailableError(
                f"the CA at {self.address} failed: {code.name}: {details}"
            ) from None
        if not response.cert_chain:
            raise CertificateAuthorityUnavailableError(
                f"the CA at {self.address} answered without a certificate chain"
            )
        return SignedChain(tuple(response.cert_chain), tuple(response.trust_bundle))

    def _get_channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address)
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close(None)
