"""RequestAuthentication `jwksUri`: fetched by the control plane, inlined as `jwks`.

Istio's istiod fetches every `jwksUri` and puts the keys into the xDS it
serves, so a workload never reaches out to an identity provider itself. Here
the fetching is done before a config is applied, outside the translator
(which stays a pure function of the config): `JwksResolver.resolve` turns a
loaded MeshConfig into one whose `jwksUri` rules also carry the fetched
`jwks`, and `JwksRefresher` runs it off the event loop whenever a config
arrives and again periodically, so key rotations reach the mesh.

Failures: a rule whose URI was fetched before keeps the last JWKS fetched (a
flaky identity provider must not lock every user out); one that was never
fetched gets a JWKS holding only a public key whose private half was thrown
away, so that issuer's tokens are rejected (fail closed) while the rest of
the config still applies. Both are reported as ConfigProblems naming the
file, resource and field.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import ConfigProblem
from .model import MeshConfig, RequestAuthentication

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_REFRESH_INTERVAL",
    "DEFAULT_RETRY_INTERVAL",
    "DEFAULT_TIMEOUT",
    "JwksFetchError",
    "JwksRefresher",
    "JwksResolver",
    "fail_closed_jwks",
    "fetch_jwks",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0  # seconds, for the whole fetch
DEFAULT_MAX_BYTES = 256 * 1024  # a JWKS is a few KiB; anything huge is a mistake or an attack
DEFAULT_REFRESH_INTERVAL = 300.0  # Istio's default JWKS refresh is 20 min; 5 min rotates faster
DEFAULT_RETRY_INTERVAL = 30.0  # after a failure, try again sooner than a full refresh

Fetch = Callable[[str], str]


class JwksFetchError(Exception):
    """A jwksUri could not be fetched or did not hold a JWKS; str() says why."""


def fetch_jwks(
    uri: str, *, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES
) -> str:
    """GET `uri` (http or https) and return its JWKS text, bounded in time and size."""
    if urlsplit(uri).scheme not in ("http", "https"):
        raise JwksFetchError("only http and https URIs are supported")
    deadline = time.monotonic() + timeout
    body = bytearray()
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=True, max_redirects=3) as client,
            client.stream("GET", uri, headers={"accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise JwksFetchError(f"HTTP status {response.status_code}")
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise JwksFetchError(f"response larger than {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise JwksFetchError(f"took longer than {timeout} s")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise JwksFetchError(f"{type(exc).__name__}: {exc}") from exc
    text = body.decode("utf-8", errors="replace")
    check_jwks_text(text)
    return text


def check_jwks_text(text: str) -> None:
    """JwksFetchError unless `text` is a JSON object with a non-empty `keys` list."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise JwksFetchError(f"not JSON: {exc}") from exc
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise JwksFetchError('not a JWKS document (a JSON object with a non-empty "keys" list)')


@cache
def fail_closed_jwks() -> str:
    """A JWKS with one EC P-256 public key whose private key is discarded here:
    no token verifies against it, yet the library accepts it as a valid JWKS."""
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()

    key = {"kty": "EC", "crv": "P-256", "x": b64(numbers.x), "y": b64(numbers.y)}
    return json.dumps({"keys": [{**key, "use": "sig", "alg": "ES256", "kid": "fail-closed"}]})


@dataclass
class _Entry:
    jwks: str | None = None  # the last JWKS fetched, if any
    fetched_at: float = 0.0
    failed_at: float | None = None  # set while the newest attempt failed
    error: str = ""


class JwksResolver:
    """Fetches and caches each jwksUri; `resolve` inlines them into a config.

    Thread-safe enough for its use: one JwksRefresher calls it from one worker
    thread at a time. `fetch` is injectable for tests.
    """

    def __init__(
        self,
        fetch: Fetch = fetch_jwks,
        *,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.refresh_interval = refresh_interval
        self.retry_interval = retry_interval
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def resolve(self, config: MeshConfig) -> tuple[MeshConfig, tuple[ConfigProblem, ...]]:
        """`config` with every jwksUri rule's `jwks` filled in, plus the fetch problems."""
        if not any(_uris(ra) for ra in config.request_authentications):
            return config, ()
        wanted = {uri for ra in config.request_authentications for _, uri in _uris(ra)}
        for uri in wanted:
            self._refresh_if_due(uri)
        for uri in set(self._entries) - wanted:  # forget URIs no config names any more
            del self._entries[uri]
        problems: list[ConfigProblem] = []
        resolved = tuple(self._inline(ra, problems) for ra in config.request_authentications)
        return replace(config, request_authentications=resolved), tuple(problems)

    def _refresh_if_due(self, uri: str) -> None:
        entry = self._entries.setdefault(uri, _Entry())
        now = self._clock()
        if entry.failed_at is not None:
            due = now - entry.failed_at >= self.retry_interval
        else:
            due = entry.jwks is None or now - entry.fetched_at >= self.refresh_interval
        if not due:
            return
        try:
            text = self._fetch(uri)
        except JwksFetchError as exc:
            entry.failed_at, entry.error = now, str(exc)
            log.warning("could not fetch JWKS from %s: %s", uri, exc)
            return
        entry.jwks, entry.fetched_at, entry.failed_at, entry.error = text, now, None, ""

    def _inline(
        self, ra: RequestAuthentication, problems: list[ConfigProblem]
    ) -> RequestAuthentication:
        uris = dict(_uris(ra))
        if not uris:
            return ra
        rules: list[Any] = list(ra.spec["jwtRules"])
        for i, uri in uris.items():
            entry = self._entries[uri]
            jwks = entry.jwks if entry.jwks is not None else fail_closed_jwks()
            rules[i] = {**rules[i], "jwks": jwks}
            if entry.failed_at is not None:
                consequence = (
                    "keeping the JWKS fetched before"
                    if entry.jwks is not None
                    else f"{_whose_tokens(rules[i])} are rejected until it is"
                )
                problems.append(
                    ConfigProblem(
                        ra.meta.file,
                        ra.meta.ref,
                        f"spec.jwtRules[{i}].jwksUri",
                        f"could not fetch {uri}: {entry.error}; {consequence}",
                    )
                )
        return replace(ra, spec={**ra.spec, "jwtRules": rules})


def _uris(ra: RequestAuthentication) -> list[tuple[int, str]]:
    """(rule index, jwksUri) of the rules that have a jwksUri and no inline jwks
    (an inline `jwks` wins, as in Istio)."""
    rules = ra.spec.get("jwtRules") or []
    return [
        (i, rule["jwksUri"])
        for i, rule in enumerate(rules)
        if isinstance(rule, Mapping) and isinstance(rule.get("jwksUri"), str)
        if "jwks" not in rule
    ]


Apply = Callable[[MeshConfig, Sequence[ConfigProblem]], None]
Prepare = Callable[[MeshConfig], Awaitable[None]]


class JwksRefresher:
    """Resolves the newest submitted config in a worker thread and hands the
    result to `apply`: at once for a new config, then every `tick` seconds
    (the resolver only fetches what is due), re-applying only on a change.
    `prepare` is awaited just before a config is applied (the control plane
    resolves the config's new DNS names there, registry/dns.py)."""

    def __init__(
        self,
        resolver: JwksResolver,
        apply: Apply,
        *,
        tick: float | None = None,
        prepare: Prepare | None = None,
    ) -> None:
        self._resolver = resolver
        self._apply = apply
        self._prepare = prepare
        self._tick = tick or min(resolver.refresh_interval, resolver.retry_interval)
        self._latest: MeshConfig | None = None
        self._submitted = asyncio.Event()
        self._last: tuple[MeshConfig, tuple[ConfigProblem, ...]] | None = None
        self._task: asyncio.Task[None] | None = None

    def submit(self, config: MeshConfig) -> None:
        """A newly loaded config (as written, jwksUri unresolved); call on the loop."""
        self._latest = config
        self._last = None  # always apply a new config, even if it resolves the same
        self._submitted.set()

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="jwks-refresher")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # the periodic refresh
                await asyncio.wait_for(self._submitted.wait(), self._tick)
            self._submitted.clear()
            config = self._latest
            if config is None:
                continue
            try:
                result = await asyncio.to_thread(self._resolver.resolve, config)
                if config is not self._latest:
                    continue  # a newer config arrived meanwhile: resolve that one next
                if result != self._last:
                    if self._prepare is not None:
                        await self._prepare(result[0])
                        if config is not self._latest:
                            continue
                    self._last = result
                    self._apply(*result)
            except Exception:
                # Stated reason: this loop is what applies every later config and
                # key rotation; one bug must not end it. Logged with its traceback.
                log.exception("resolving jwksUris failed")


def _whose_tokens(rule: Mapping[str, Any]) -> str:
    issuer = rule.get("issuer")
    return f"tokens of issuer {issuer!r}" if issuer else "the tokens this rule accepts (any issuer)"
