"""How close this workload's certificate is to expiring, and saying so once.

Renewal starts at 40-50 % of the lifetime and retries with backoff, so a
single failed attempt is routine; what matters is a CA that stays away long
enough to threaten the certificate. The states, from the manager's clock
(`lifetime` = notAfter - the time the certificate was received):

- OK: more than a quarter of the lifetime left. A failed renewal here is
  logged (WARNING for the first failure of a streak) but is not a risk yet.
- AT_RISK: less than `AT_RISK_FRACTION` (1/4) of the lifetime left. Renewal
  is due at half life, so getting here means it has failed for at least a
  quarter of the lifetime (or never ran). WARNING once on entry; ERROR once
  more when less than `CRITICAL_FRACTION` (1/10) is left.
- EXPIRED: past notAfter. ERROR once on entry. Peers reject the certificate
  and outbound mTLS fails closed (WorkloadCertificateExpiredError); renewal
  keeps retrying (with the join token, the certificate no longer proves
  anything) and the state returns to OK by itself when the CA answers.

Each change of level is logged once, never per retry; while not OK, a
reminder repeats at most every `REMIND_EVERY` seconds. Evaluation happens in
the renewal loop (which wakes at each threshold) and on every `status()`
read, under a lock, since health checks may come from any thread.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from proxyless_mesh.security._credentials import Credentials

__all__ = [
    "AT_RISK_FRACTION",
    "CRITICAL_FRACTION",
    "REMIND_EVERY",
    "ExpiryWatch",
    "IdentityState",
    "IdentityStatus",
]

log = logging.getLogger("proxyless_mesh.security")

AT_RISK_FRACTION = 0.25
CRITICAL_FRACTION = 0.10
REMIND_EVERY = 300.0


class IdentityState(enum.StrEnum):
    """The workload identity as a health check reports it (compares equal to
    its string value, e.g. `state == "at_risk"`)."""

    OK = "ok"
    AT_RISK = "at_risk"
    EXPIRED = "expired"
    #: No identity: mTLS off, no CA in the bootstrap, or not started.
    DISABLED = "disabled"


@dataclass(frozen=True)
class IdentityStatus:
    """One reading of the identity: `expires_in` seconds (negative once
    expired; None without a certificate), the last renewal error since the
    last success and how many renewals failed in a row."""

    state: IdentityState
    expires_in: float | None = None
    last_renewal_error: str | None = None
    renewal_failures: int = 0


# Internal levels: CRITICAL is AT_RISK with an ERROR-level log.
_OK, _AT_RISK, _CRITICAL, _EXPIRED = range(4)
_STATE = (IdentityState.OK, IdentityState.AT_RISK, IdentityState.AT_RISK, IdentityState.EXPIRED)


class ExpiryWatch:
    """The expiry-risk state machine of one IdentityManager."""

    def __init__(self, spiffe_id: str, clock: Callable[[], float]) -> None:
        self.spiffe_id = spiffe_id
        self._clock = clock
        self._lock = threading.Lock()
        self._level = _OK
        self._failures = 0
        self._last_error: str | None = None
        self._reminded_at = float("-inf")

    def status(self, credentials: Credentials | None) -> IdentityStatus:
        """The current reading; logs a change of level first seen here."""
        if credentials is None:
            return IdentityStatus(IdentityState.DISABLED)
        with self._lock:
            now = self._clock()
            self._move_to(_level(credentials, now), credentials, now)
            return IdentityStatus(
                _STATE[self._level],
                credentials.expires_at - now,
                self._last_error,
                self._failures,
            )

    def renewed(self, credentials: Credentials) -> None:
        """A new certificate is installed: back to OK, streak forgotten."""
        with self._lock:
            recovered = self._level != _OK or self._failures > 0
            if self._level != _OK:
                log.warning(
                    "workload certificate for %s renewed after %d failed attempt(s): "
                    "identity %s -> ok",
                    self.spiffe_id,
                    self._failures,
                    _STATE[self._level],
                )
            elif recovered:
                log.info("certificate renewal for %s succeeded again", self.spiffe_id)
            self._level, self._failures, self._last_error = _OK, 0, None
            self._reminded_at = float("-inf")

    def failed(self, credentials: Credentials, error: BaseException, retry_in: float) -> None:
        """A renewal attempt failed: count it, log it without spamming (first
        of a streak, a change of level, or a reminder), re-evaluate."""
        with self._lock:
            now = self._clock()
            self._failures += 1
            self._last_error = str(error)
            remaining = credentials.expires_at - now
            moved = self._move_to(_level(credentials, now), credentials, now)
            if moved:
                self._reminded_at = now
                return
            if self._failures == 1 or now - self._reminded_at >= REMIND_EVERY:
                self._reminded_at = now
                level = logging.ERROR if self._level >= _CRITICAL else logging.WARNING
            else:
                level = logging.DEBUG
            log.log(
                level,
                "certificate renewal for %s failed (%d in a row, retrying in %.1fs, "
                "certificate %s): %s",
                self.spiffe_id,
                self._failures,
                retry_in,
                _expiry_text(remaining),
                error,
            )

    def until_next_level(self, credentials: Credentials) -> float | None:
        """Seconds until the next threshold is crossed (None: already
        expired), so the renewal loop can wake for it and log on time."""
        now = self._clock()
        remaining = credentials.expires_at - now
        if remaining <= 0:
            return None
        lifetime = _lifetime(credentials)
        for left in (lifetime * AT_RISK_FRACTION, lifetime * CRITICAL_FRACTION, 0.0):
            if remaining > left:
                return remaining - left
        return None  # unreachable: remaining > 0.0

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def _move_to(self, level: int, credentials: Credentials, now: float) -> bool:
        """Log a change of level once (caller holds the lock)."""
        if level == self._level:
            return False
        previous, self._level = self._level, level
        if level < previous:
            return True  # time does not run backwards; only a renewal lowers it
        remaining = credentials.expires_at - now
        why = f"; last renewal error: {self._last_error}" if self._last_error else ""
        if level == _EXPIRED:
            log.error(
                "workload certificate for %s EXPIRED (%s) and the CA has not renewed it: peers "
                "reject it and outbound mTLS is refused until renewal succeeds (still "
                "retrying)%s",
                self.spiffe_id,
                _expiry_text(remaining),
                why,
            )
        else:
            critical = level == _CRITICAL
            log.log(
                logging.ERROR if critical else logging.WARNING,
                "workload certificate for %s %sat risk: %s and not renewed (%d failed "
                "attempt(s) in a row)%s",
                self.spiffe_id,
                "critically " if critical else "",
                _expiry_text(remaining),
                self._failures,
                why,
            )
        return True


def _lifetime(credentials: Credentials) -> float:
    return max(0.0, credentials.expires_at - credentials.fetched_at)


def _level(credentials: Credentials, now: float) -> int:
    remaining = credentials.expires_at - now
    if remaining <= 0:
        return _EXPIRED
    lifetime = _lifetime(credentials)
    if remaining < lifetime * CRITICAL_FRACTION:
        return _CRITICAL
    if remaining < lifetime * AT_RISK_FRACTION:
        return _AT_RISK
    return _OK


def _expiry_text(remaining: float) -> str:
    if remaining > 0:
        return f"expires in {remaining:.0f}s"
    return f"expired {-remaining:.0f}s ago"
