"""The certificate-signing gRPC service (Istio's IstioCertificateService shape).

Who may have which identity:
- `authorization: Bearer <join token>`: the identity the token names.
- renewal: `x-mesh-cert-chain-bin` (the caller's current chain, PEM) and
  `x-mesh-renewal-proof-bin` (a signature by that chain's key over the new
  CSR): the identity in the chain, if it verifies now against the bundle.
  Binding the proof to the CSR makes a captured renewal worthless: replaying
  it only yields a certificate for a key the eavesdropper does not have.
- nothing else: UNAUTHENTICATED.
Then the CSR must ask for exactly that identity (one URI SAN, nothing more),
or PERMISSION_DENIED. Every refusal is logged with its reason and the caller's
address; tokens, keys and CSRs are never logged.

Transport: its own plaintext gRPC port, like ADS today (the bootstrap only
knows "insecure" channel creds). The join token is a bearer secret on that
hop: keep the CA port on a trusted network until the control-plane channel
gets TLS; renewal is safe on any network (see above).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15

from mesh_control_plane.ca.authority import CertificateAuthority
from mesh_control_plane.ca.root_schedule import RootSchedule
from mesh_control_plane.ca.rotation_signal import install_rotation_signal
from mesh_control_plane.ca.tokens import TokenAuthority, TokenError
from proxyless_mesh import ca_wire
from proxyless_mesh.security import SpiffeId

__all__ = ["CaServer", "CertificateService", "Refusal"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal(Exception):
    """A request we will not sign, with the status and the reason sent back."""

    code: grpc.StatusCode
    reason: str


class CertificateService:
    """Authenticates, checks the CSR against the proven identity, signs."""

    def __init__(
        self,
        ca: CertificateAuthority,
        tokens: TokenAuthority,
        reviewer: Callable[[str], Awaitable[SpiffeId]] | None = None,
    ) -> None:
        """`reviewer`: a bearer token that is no join token is asked of it (Kubernetes
        ServiceAccount tokens, kube/tokenreview.py); TokenError refuses."""
        self.ca = ca
        self.tokens = tokens
        self.reviewer = reviewer

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            ca_wire.SERVICE_NAME,
            {
                "CreateCertificate": grpc.unary_unary_rpc_method_handler(
                    self._create_certificate,
                    request_deserializer=ca_wire.CertificateRequest.FromString,
                    response_serializer=lambda m: m.SerializeToString(),
                )
            },
        )

    async def _create_certificate(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        metadata = {k: v for k, v in (context.invocation_metadata() or ())}
        try:
            proven = await self._review(metadata)
            chain, granted, how = self.sign(
                request.csr, request.validity_duration, metadata, proven
            )
        except Refusal as refusal:
            log.warning(
                "refused a certificate request from %s: %s: %s",
                context.peer(),
                refusal.code.name,
                refusal.reason,
            )
            await context.abort(refusal.code, refusal.reason)
        log.info(
            "signed %s for %s (%s) until %s",
            granted,
            context.peer(),
            how,
            chain[0].not_valid_after_utc.isoformat(timespec="seconds"),
        )
        return ca_wire.CertificateResponse(
            cert_chain=[_pem(c) for c in chain],
            trust_bundle=[_pem(c) for c in self.ca.trust_bundle()],
        )

    async def _review(self, metadata: Mapping[str, str | bytes]) -> tuple[SpiffeId, str] | None:
        """A bearer token that is no join token, proven by the reviewer; None when
        there is nothing to review (sign() then authenticates as before)."""
        auth = metadata.get(ca_wire.AUTHORIZATION)
        if self.reviewer is None or auth is None:
            return None
        scheme, _, token = str(auth).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            self.tokens.verify(token.strip())
            return None
        except TokenError as exc:
            join_reason = exc.reason
        try:
            return await self.reviewer(token.strip()), "ServiceAccount token"
        except TokenError as exc:
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                f"not a valid join token ({join_reason}) nor a ServiceAccount token "
                f"Kubernetes accepts ({exc.reason})",
            ) from None

    def sign(
        self,
        csr_pem: str,
        validity: int,
        metadata: Mapping[str, str | bytes],
        proven: tuple[SpiffeId, str] | None = None,
    ) -> tuple[list[x509.Certificate], str, str]:
        """(chain, granted SPIFFE ID, how it was proven) or Refusal. Pure of
        gRPC so it can be tested without a server; `proven` is an identity
        already established (by the reviewer)."""
        granted, how = proven or self._authenticate(csr_pem, metadata)
        if granted.trust_domain != self.ca.trust_domain:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{granted} is not in this CA's trust domain {self.ca.trust_domain}",
            )
        csr = _parse_csr(csr_pem)
        try:
            sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            sans = x509.SubjectAlternativeName([])
        asked = [str(n.value) for n in sans]
        if asked != [granted.uri] or sans.get_values_for_type(x509.UniformResourceIdentifier) != [
            granted.uri
        ]:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the CSR asks for {', '.join(asked) or 'no identity'} but the {how} grants "
                f"{granted} only",
            )
        ttl = self.ca.leaf_ttl(float(validity) if validity > 0 else 0.0)
        return self.ca.sign(csr, granted.uri, ttl), granted.uri, how

    def _authenticate(
        self, csr_pem: str, metadata: Mapping[str, str | bytes]
    ) -> tuple[SpiffeId, str]:
        auth = metadata.get(ca_wire.AUTHORIZATION)
        if auth is not None:
            scheme, _, token = str(auth).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Refusal(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "the authorization metadata must be 'Bearer <join token>'",
                )
            try:
                return self.tokens.verify(token.strip()), "join token"
            except TokenError as exc:
                raise Refusal(grpc.StatusCode.UNAUTHENTICATED, exc.reason) from None
        chain_pem = metadata.get(ca_wire.RENEWAL_CHAIN)
        proof = metadata.get(ca_wire.RENEWAL_PROOF)
        if isinstance(chain_pem, bytes) and isinstance(proof, bytes):
            return self._verify_renewal(csr_pem, chain_pem, proof), "current certificate"
        raise Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            "no credentials: send 'authorization: Bearer <join token>' (meshctl token create) "
            "or renew with the current mesh certificate",
        )

    def _verify_renewal(self, csr_pem: str, chain_pem: bytes, proof: bytes) -> SpiffeId:
        try:
            chain = x509.load_pem_x509_certificates(chain_pem)
            spiffe_id = self.ca.verify_chain(chain)
        except ValueError as exc:
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED, f"renewal certificate refused: {exc}"
            ) from None
        key = chain[0].public_key()
        payload = ca_wire.renewal_payload(csr_pem)
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(proof, payload, ec.ECDSA(hashes.SHA256()))
            elif isinstance(key, rsa.RSAPublicKey):
                key.verify(proof, payload, PKCS1v15(), hashes.SHA256())
            else:
                raise InvalidSignature
        except InvalidSignature:
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "renewal proof invalid: not signed by the presented certificate's key over "
                "this CSR",
            ) from None
        try:
            return SpiffeId.parse(spiffe_id)
        except ValueError as exc:
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None


def _parse_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError:
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "the CSR is not a PEM CSR") from None
    if not csr.is_signature_valid:
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "the CSR's self-signature does not verify")
    return csr


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class CaServer:
    """A grpc.aio server carrying only the certificate service; keeps the server
    referenced (a collected grpc server stops serving)."""

    def __init__(self, service: CertificateService) -> None:
        self.service = service
        self._server: grpc.aio.Server | None = None
        self.port = 0
        self._remove_signal: Callable[[], None] = lambda: None
        self.on_rotated: Callable[[], None] = lambda: None  # after a rotation here
        # Whether this replica rotates the root (the Lease holder when replicas share it).
        self.may_rotate: Callable[[], bool] = lambda: True
        self._schedule: asyncio.Task[None] | None = None

    async def start(self, address: str) -> int:
        """Listen on "HOST:PORT" (port 0 picks one); returns the bound port."""
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self.service.handler(),))
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(
                f"cannot listen for the CA on {address}: address in use or invalid"
            ) from exc
        await server.start()
        self._server, self.port = server, port
        # kill -USR1 <control plane> rotates the root (see rotation_signal), and
        # the schedule does when the root nears its end (root_schedule).
        self._remove_signal = install_rotation_signal(
            self.service.ca, lambda: self.on_rotated(), lambda: self.may_rotate()
        )
        schedule = RootSchedule(
            self.service.ca,
            may_rotate=lambda: self.may_rotate(),
            on_rotated=lambda: self.on_rotated(),
        )
        self._schedule = asyncio.create_task(schedule.run(), name="root rotation schedule")
        return port

    async def stop(self, grace: float | None = 1.0) -> None:
        self._remove_signal()
        self._remove_signal = lambda: None
        if self._schedule is not None:
            self._schedule.cancel()
            self._schedule = None
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)
