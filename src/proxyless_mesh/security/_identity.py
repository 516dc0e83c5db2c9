"""`IdentityManager`: get this workload's certificate, keep it fresh, tell others.

Lifecycle, all on the mesh's event loop:
- `start()`: new ECDSA key, CSR for our SPIFFE ID, signed by the CA on the
  strength of the join token; a CA that does not answer is asked again with
  jittered backoff (capped at START_RETRY_CAP) until `start_within`'s timeout.
  A refusal, or no answer in time, raises: a workload that cannot get an
  identity cannot talk mTLS, better to say so at start.
- with a `CertificateCache` (see _cert_cache.py), `start_within` first looks
  for a still-valid cached certificate of our SPIFFE ID: the workload starts
  with it at once and the renewal loop asks the CA for a new one right away.
- then a task renews at a jittered 40-50 % of the lifetime (a new key each
  time), authenticating with the current certificate (falling back to the token
  if that is refused). Failures keep the current certificate and retry with
  backoff. Each renewal also brings the CA's current trust bundle, which is how
  a new root arrives before anything is signed by it.
- every new `Credentials` is swapped in with one assignment, written to the
  grpcio files if configured, and passed to the listeners.
- when the CA stays away, `ExpiryWatch` (see _expiry.py) turns the remaining
  lifetime into ok / at_risk / expired, logged once per change, exposed by
  `status()` and the `mesh_workload_cert_expiry_seconds` gauge. At expiry,
  `valid_credentials()` (outbound mTLS) raises WorkloadCertificateExpiredError
  rather than offer peers a certificate they reject; renewal never stops, so
  the workload recovers by itself when the CA is back.
Clock, sleep and randomness are injectable so tests never wait for real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from proxyless_mesh.errors import (
    CertificateAuthorityUnavailableError,
    IdentityConfigError,
    IdentityError,
    TokenRejectedError,
    WorkloadCertificateExpiredError,
)
from proxyless_mesh.security._ca_client import CaClient, SignedChain
from proxyless_mesh.security._cert_cache import CertificateCache
from proxyless_mesh.security._certificates import Certificate
from proxyless_mesh.security._config import TOKEN_ENV, IdentityConfig
from proxyless_mesh.security._credentials import Credentials
from proxyless_mesh.security._expiry import ExpiryWatch, IdentityStatus
from proxyless_mesh.security._grpc_files import CredentialFiles, file_watcher_provider
from proxyless_mesh.security._keys import WorkloadKey, make_csr, new_private_key

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter

    from proxyless_mesh.telemetry import IdentityMetrics

__all__ = ["CredentialsListener", "IdentityManager"]

log = logging.getLogger("proxyless_mesh.security")

CredentialsListener = Callable[[Credentials], None]

#: Renew between these fractions of the lifetime: at half life, jittered
#: earlier so a fleet started together does not renew together.
RENEW_AT = (0.4, 0.5)
MAX_RETRY_DELAY = 30.0
#: Once expired the workload is out of service and a retry is its only way
#: back: retry at least this often (one small RPC per workload).
EXPIRED_RETRY_DELAY = 5.0
#: The first certificate (and the first renewal of a cached one): asked again
#: after jittered delays from START_RETRY_BASE doubling up to this cap, so a
#: workload starts within about this long of its CA's return.
START_RETRY_BASE = 0.1
START_RETRY_CAP = 2.0
# Wake this long after a threshold, so the clock read then is surely past it.
_THRESHOLD_MARGIN = 0.01


class IdentityManager:
    """This workload's SPIFFE identity and its rotating credentials."""

    def __init__(
        self,
        config: IdentityConfig,
        *,
        client: CaClient | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
        meter: Meter | None = None,
        cache: CertificateCache | None = None,
    ) -> None:
        """`meter`: where the identity metrics go (see telemetry's
        IdentityMetrics); None: no metrics. `cache`: where the current
        certificate is kept for a restart (None: memory only)."""
        self.config = config
        self._client = client or CaClient(config.ca_address)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._files = CredentialFiles(config.credentials_dir) if config.credentials_dir else None
        self._credentials: Credentials | None = None
        self._listeners: list[CredentialsListener] = []
        self._task: asyncio.Task[None] | None = None
        self._cache = cache
        self._from_cache = False  # running on a cached certificate not yet renewed
        self._start_error: str | None = None  # the first certificate's last failure
        self._watch = ExpiryWatch(self.spiffe_id, clock)
        self._metrics: IdentityMetrics | None = None
        if meter is not None:
            # Imported here: the telemetry package imports the integrations,
            # which import this package (a cycle at import time).
            from proxyless_mesh.telemetry import IdentityMetrics

            self._metrics = IdentityMetrics(meter, self.spiffe_id, self._expires_in)

    # -- what the rest of the mesh reads -------------------------------------

    @property
    def spiffe_id(self) -> str:
        """Our SPIFFE ID (known from config even before the first certificate)."""
        return self.config.identity.uri

    @property
    def credentials(self) -> Credentials:
        """The current key/chain/roots; IdentityError before `start()` succeeded."""
        if self._credentials is None:
            raise IdentityError("no workload certificate yet: the identity is not started")
        return self._credentials

    def valid_credentials(self) -> Credentials:
        """The current credentials if their certificate has not expired, for
        starting outbound mTLS: past notAfter every peer would refuse the
        handshake, so this fails closed with WorkloadCertificateExpiredError
        (naming the expiry and the last renewal error) instead."""
        credentials = self.credentials
        if self._clock() >= credentials.expires_at:
            raise WorkloadCertificateExpiredError(
                self.spiffe_id, credentials.expires_at, self._watch.last_error
            )
        return credentials

    def status(self) -> IdentityStatus:
        """ok / at_risk / expired (see _expiry.py for the thresholds), seconds
        to expiry and the last renewal error. Safe from any thread; a change
        of state first noticed here is logged here."""
        return self._watch.status(self._credentials)

    @property
    def roots(self) -> tuple[Certificate, ...]:
        return self.credentials.roots

    def client_ssl_context(self, alpn_protocols: Sequence[str] = ()) -> ssl.SSLContext:
        """The outbound mTLS context of the current credentials (see Credentials)."""
        return self.credentials.client_ssl_context(alpn_protocols)

    def server_ssl_context(
        self, alpn_protocols: Sequence[str] = (), *, require_client_cert: bool = True
    ) -> ssl.SSLContext:
        """The inbound mTLS context of the current credentials (see Credentials)."""
        return self.credentials.server_ssl_context(
            alpn_protocols, require_client_cert=require_client_cert
        )

    def certificate_providers(self, refresh_interval: float = 1.0) -> dict[str, Any]:
        """The bootstrap `certificate_providers` for grpcio's native xDS, pointing
        at the files this manager keeps; IdentityError without credentials_dir."""
        if self.config.credentials_dir is None:
            raise IdentityError("no credentials_dir configured: grpcio needs credential files")
        return file_watcher_provider(self.config.credentials_dir, refresh_interval)

    def add_listener(self, listener: CredentialsListener) -> Callable[[], None]:
        """Call `listener(credentials)` after each rotation (on the mesh's loop);
        returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # -- lifecycle -------------------------------------------------------------

    async def start_within(self, timeout: float) -> Credentials:
        """start(), bounded: a CA that does not answer in `timeout` (asked
        again with backoff meanwhile) is CertificateAuthorityUnavailableError.
        A valid cached certificate (see CertificateCache) starts at once
        instead. On any failure the manager is closed, so a workload that
        cannot prove who it is leaves nothing behind."""
        try:
            cached = self._cache.load(self.spiffe_id, self._clock()) if self._cache else None
            if cached is not None:
                return self._start_cached(cached)
            async with asyncio.timeout(timeout):
                return await self.start()
        except TimeoutError:
            await self.close()
            last = self._start_error
            raise CertificateAuthorityUnavailableError(
                f"no workload certificate for {self.spiffe_id} from the CA at "
                f"{self.config.ca_address} within {timeout:g}s"
                + (f" (last error: {last})" if last else "")
            ) from None
        except BaseException:
            await self.close()
            raise

    async def start(self) -> Credentials:
        """Get the first certificate (with the join token), then renew in the
        background until `close()`."""
        if self._task is not None:
            raise IdentityError("the identity manager is already started")
        if not self.config.token:
            raise IdentityConfigError(
                f"no join token for {self.spiffe_id}: put one in the bootstrap's "
                f"'proxyless_mesh.token' or in ${TOKEN_ENV} "
                "(mint it with `meshctl token create`)"
            )
        credentials = await self._first_certificate()
        self._task = asyncio.create_task(self._renew_forever(), name="proxyless-mesh-identity")
        return credentials

    def _start_cached(self, cached: Credentials) -> Credentials:
        """Start with a certificate from the cache; renew it at once."""
        if self._task is not None:
            raise IdentityError("the identity manager is already started")
        self._from_cache = True
        self._install(cached, save=False)
        log.info(
            "starting with the cached workload certificate for %s (valid until %s); "
            "asking the CA at %s for a new one now",
            self.spiffe_id,
            cached.not_after.isoformat(),
            self.config.ca_address,
        )
        self._task = asyncio.create_task(
            self._renew_forever(first_delay=0.0), name="proxyless-mesh-identity"
        )
        return cached

    async def _first_certificate(self) -> Credentials:
        """Ask until the CA answers; a refusal (TokenRejectedError) ends it at
        once. One WARNING when the CA first fails, one INFO when it answers."""
        failures = 0
        while True:
            try:
                credentials = await self._fetch(use_current=False)
            except CertificateAuthorityUnavailableError as exc:
                failures += 1
                self._start_error = str(exc)
                delay = self._start_delay(failures)
                if failures == 1:
                    log.warning(
                        "no workload certificate for %s yet: %s; asking again until the CA answers",
                        self.spiffe_id,
                        exc,
                    )
                await self._sleep(delay)
                continue
            if failures:
                log.info(
                    "the CA at %s answered after %d failed attempt(s): workload certificate "
                    "for %s issued",
                    self.config.ca_address,
                    failures,
                    self.spiffe_id,
                )
            return credentials

    def _start_delay(self, attempt: int) -> float:
        """Exponential from START_RETRY_BASE, capped, with jitter (half to
        all of it) so workloads started together do not ask together."""
        ceiling = min(START_RETRY_CAP, START_RETRY_BASE * 2.0 ** (attempt - 1))
        return ceiling * self._rng.uniform(0.5, 1.0)

    async def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.close()

    async def renew(self) -> Credentials:
        """Renew now: with the current certificate while it is valid, else (or if
        that is refused) with the token."""
        return await self._fetch(use_current=True)

    def renewal_delay(self, credentials: Credentials) -> float:
        """Seconds from now until `credentials` should be renewed."""
        lifetime = credentials.expires_at - credentials.fetched_at
        due = credentials.fetched_at + lifetime * self._rng.uniform(*RENEW_AT)
        return max(0.0, due - self._clock())

    # -- internals --------------------------------------------------------------

    async def _fetch(self, *, use_current: bool) -> Credentials:
        key = new_private_key()
        csr = make_csr(key, self.config.identity)
        ttl = self.config.requested_ttl
        current = self._credentials if use_current else None
        signed: SignedChain | None = None
        if current is not None and self._clock() < current.expires_at:
            try:
                signed = await self._client.create_certificate(csr, ttl, renewal=current)
            except TokenRejectedError as exc:
                if not self.config.token:
                    raise
                log.warning(
                    "renewal with the current certificate refused (%s); trying the join token",
                    exc.reason,
                )
        if signed is None:
            if not self.config.token:
                raise IdentityConfigError(f"no join token to request {self.spiffe_id} with")
            signed = await self._client.create_certificate(csr, ttl, token=self.config.token)
        credentials = self._accept(key, signed)
        self._install(credentials)
        return credentials

    def _accept(self, key: WorkloadKey, signed: SignedChain) -> Credentials:
        """Check the answer is a chain for our key and our identity, then wrap it."""
        try:
            chain = tuple(Certificate.from_pem(p) for p in signed.cert_chain)
            bundle = tuple(Certificate.from_pem(p) for p in signed.trust_bundle)
        except ValueError as exc:
            raise CertificateAuthorityUnavailableError(
                f"the CA at {self.config.ca_address} sent an unreadable certificate: {exc}"
            ) from None
        leaf = chain[0]
        if leaf.public_key_der != key.public_key_der() or leaf.spiffe_id != self.spiffe_id:
            raise CertificateAuthorityUnavailableError(
                f"the CA at {self.config.ca_address} returned a certificate for another key "
                f"or identity ({leaf.spiffe_id}), not for {self.spiffe_id}"
            )
        # Without the bundle extension, the root is the chain's last element.
        roots = bundle or chain[-1:]
        issued = tuple(c for c in chain[1:] if c not in roots)
        return Credentials(key, (leaf, *issued), roots, fetched_at=self._clock())

    def _install(self, credentials: Credentials, *, save: bool = True) -> None:
        previous, self._credentials = self._credentials, credentials
        if self._files is not None:
            self._files.write(credentials)
        if save and self._cache is not None:
            self._from_cache = False
            self._cache.save(credentials)
        if previous is not None and set(previous.roots) != set(credentials.roots):
            log.info("trust bundle changed: %d root(s)", len(credentials.roots))
        self._watch.renewed(credentials)
        log.info(
            "workload certificate for %s valid until %s",
            self.spiffe_id,
            credentials.not_after.isoformat(),
        )
        for listener in list(self._listeners):
            try:
                listener(credentials)
            except Exception:
                # A listener's bug must not stop rotation for everyone else.
                log.exception("credentials listener %r failed", listener)

    async def _renew_forever(self, first_delay: float | None = None) -> None:
        attempt = 0
        delay = self.renewal_delay(self.credentials) if first_delay is None else first_delay
        while True:
            await self._sleep(delay)
            try:
                credentials = await self.renew()
            except IdentityError as exc:
                attempt += 1
                delay = self._retry_delay(attempt)
                if self._metrics is not None:
                    self._metrics.renewal_failed()
                self._watch.failed(self.credentials, exc, delay)
                continue
            attempt = 0
            delay = self.renewal_delay(credentials)

    def _retry_delay(self, attempt: int) -> float:
        """Exponential backoff, capped at MAX_RETRY_DELAY and, while the
        certificate is valid, at a quarter of what is left of it (more tries
        as expiry nears); shortened to wake just past the next risk threshold,
        so its log line and state change are on time rather than a retry late."""
        credentials = self.credentials
        delay = min(2.0**attempt, MAX_RETRY_DELAY)
        if self._from_cache:
            delay = self._start_delay(attempt)  # a restart's certificate: replace it soon
        remaining = credentials.expires_at - self._clock()
        if remaining > 0:
            delay = min(delay, max(1.0, remaining / 4))
        else:
            delay = min(delay, EXPIRED_RETRY_DELAY)
        until = self._watch.until_next_level(credentials)
        if until is not None:
            delay = min(delay, until + _THRESHOLD_MARGIN)
        return delay

    def _expires_in(self) -> float | None:
        """For the gauge: seconds left on the current certificate."""
        credentials = self._credentials
        return None if credentials is None else credentials.expires_at - self._clock()
