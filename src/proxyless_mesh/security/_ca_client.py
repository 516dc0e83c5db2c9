"""The gRPC client of the control plane's certificate service.

Sends a CSR with proof of who we are (a join token, or for renewal the current
chain and a signature by the current key over the new CSR) and returns the
chain and trust bundle. Refusals become TokenRejectedError, everything else
CertificateAuthorityUnavailableError, so the renewal loop knows whether retrying
can help.

The call goes over `h2` (grpc_wire) when it is installed, else over grpcio;
the messages are encoded by hand (ca_wire), so neither grpcio nor protobuf is
loaded for it (issue 25).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxyless_mesh import ca_wire, grpc_wire
from proxyless_mesh.errors import CertificateAuthorityUnavailableError, TokenRejectedError
from proxyless_mesh.grpc_wire import GrpcCallError
from proxyless_mesh.security._credentials import Credentials

__all__ = ["CaClient", "SignedChain"]

_REFUSALS = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT"})


@dataclass(frozen=True)
class SignedChain:
    """What the CA answered: PEM chain (leaf first, root last) and the roots
    it currently trusts (PEM; empty from a CA without the bundle extension)."""

    cert_chain: tuple[str, ...]
    trust_bundle: tuple[str, ...]


class CaClient:
    """One channel to the CA (grpc_wire's, or grpcio's with `transport="grpcio"`
    or without h2), opened on first use on the running loop."""

    def __init__(
        self, address: str, *, timeout: float = 10.0, transport: str | None = None
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._transport = transport
        self._channel: grpc_wire.UnaryChannel | None = None

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
            proof = renewal.key.sign(ca_wire.renewal_payload(csr_pem))
            metadata = (
                (ca_wire.RENEWAL_CHAIN, renewal.chain_pem.encode()),
                (ca_wire.RENEWAL_PROOF, proof),
            )
        else:
            raise ValueError("authenticate with exactly one of token or renewal")
        request = ca_wire.encode_request(csr_pem, validity_seconds)
        try:
            data = await self._get_channel().call(
                ca_wire.CREATE_CERTIFICATE, request, metadata=metadata, timeout=self.timeout
            )
            cert_chain, trust_bundle = ca_wire.decode_response(data)
        except GrpcCallError as exc:
            if exc.code in _REFUSALS:
                raise TokenRejectedError(
                    f"the CA at {self.address} refused to sign: {exc.code}: {exc.details}",
                    code=exc.code,
                    reason=exc.details,
                ) from None
            raise CertificateAuthorityUnavailableError(
                f"the CA at {self.address} failed: {exc.code}: {exc.details}"
            ) from None
        except ValueError as exc:
            raise CertificateAuthorityUnavailableError(
                f"the CA at {self.address} answered with a malformed response: {exc}"
            ) from None
        if not cert_chain:
            raise CertificateAuthorityUnavailableError(
                f"the CA at {self.address} answered without a certificate chain"
            )
        return SignedChain(cert_chain, trust_bundle)

    def _get_channel(self) -> grpc_wire.UnaryChannel:
        if self._channel is None:
            self._channel = grpc_wire.unary_channel(self.address, self._transport)
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()
