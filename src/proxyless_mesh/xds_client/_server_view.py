"""What the server certainly had subscribed when it built a response.

Why: in State of the World, a name missing from an LDS/CDS response means
"does not exist" only if the server had already read our subscription to it.
A response built before that (a push, or the answer to an earlier request,
already in flight) omits it too, and nothing in the response says which. gRPC
therefore never declares a never-received resource absent from a response; it
waits for a 15 s timer. We want a non-mesh host resolved at once, so instead
we infer it from the one thing SotW does guarantee: order.

The server rules this relies on (our control plane's `xds/server.py`, and the
usual SotW behaviour, e.g. go-control-plane's):

1. A request whose nonce is not the latest the server sent for that type is
   stale and ignored whole (names included).
2. A request with the latest nonce, or with none, whose names differ from the
   subscription the server holds (or with no nonce at all) is answered at once
   with a response built for those names; one with the same names is silent.
3. A response the server sends on its own (a push) carries a new version.

And one rule of ours (`AdsProtocol`): at most one request without a nonce per
type and stream; the next names ride on the ACK of the first response.

So for response j, every request that could have been read "fresh" before j
was built is one we sent after receiving j-1 (they carry j-1's nonce: the
"window"). If j kept j-1's version it is no push, so it answers the first
window request whose names differ from what the server held, and was built
for exactly those names. If the version changed it may also be a push built
for what the server held. We keep the few possible server subscriptions
(candidates); a name in all of them was certainly subscribed. If the
candidates ever become unknowable, nothing is inferred until the next stream
and the does-not-exist timer decides, as in gRPC.
"""

from __future__ import annotations

from collections.abc import Set

__all__ = ["ServerView"]

_MAX_CANDIDATES = 8  # beyond this, give up inferring (the timer still decides)


class ServerView:
    """Per type, per stream: the subscriptions the server may hold."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A new stream: the server knows nothing of us yet."""
        self._answered = False  # a response of this type arrived on this stream
        self._window: list[frozenset[str]] = []  # names sent since the last response
        self._candidates: set[frozenset[str]] | None = set()  # None: unknowable
        self._version = ""

    @property
    def awaiting_first_response(self) -> bool:
        """A request went out on this stream and nothing has come back: the
        next names must wait for the ACK (one nonce-less request per type)."""
        return bool(self._window) and not self._answered

    def sent(self, names: frozenset[str]) -> None:
        """A request carrying `names` was queued (in wire order)."""
        self._window.append(names)

    def received(self, version: str, names_in_response: Set[str] | None) -> frozenset[str]:
        """A response arrived: returns the names the server certainly had
        subscribed when it built it. `names_in_response` (None if some
        resource could not be named) prunes candidates it could not come from."""
        window, self._window = self._window, []
        if not self._answered:
            # the answer to our one request without a nonce
            built: set[frozenset[str]] | None = {window[0]} if window else None
        elif self._candidates is None:
            built = None
        else:
            built = set()
            for held in self._candidates:
                fresh = next((w for w in window if w != held), None)
                if fresh is not None:
                    built.add(fresh)  # the answer to the first request that changed it
                if version != self._version:
                    built.add(held)  # or a push built for what the server held
        if built is not None and names_in_response is not None:
            built = {held for held in built if names_in_response <= held}
        if not built or len(built) > _MAX_CANDIDATES:
            built = None  # no consistent explanation: stop inferring on this stream
        self._answered, self._candidates, self._version = True, built, version
        if built is None:
            return frozenset()
        return frozenset.intersection(*built)
