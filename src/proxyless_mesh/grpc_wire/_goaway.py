"""GOAWAY taken out of the server's bytes before `h2` sees them.

h2 closes its whole state machine on a received GOAWAY (any later frame is a
protocol error), so the calls the server promised to finish could not be
read. HTTP/2 (RFC 9113 §6.8) says streams up to the frame's last-stream-id
may still complete; gRPC servers shutting down gracefully (grpcio's
`server.stop(grace)`) finish them. So the reader splits the byte stream at
frame boundaries (a 9-byte header: 24-bit length, type, flags, stream id),
passes every other frame to h2 unchanged and hands GOAWAYs to the connection,
which stops opening streams on it and lets the promised ones drain.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Goaway", "GoawayFilter"]

_HEADER = 9
_GOAWAY = 0x7


@dataclass(frozen=True)
class Goaway:
    last_stream_id: int
    error_code: int
    debug: bytes


class GoawayFilter:
    """Feed it what the socket gave; get back the bytes for h2 and the GOAWAYs."""

    def __init__(self) -> None:
        self._header = bytearray()  # a frame header split across reads
        self._passing = 0  # payload bytes of the current (passed) frame still to come
        self._goaway: bytearray | None = None  # a GOAWAY payload being collected
        self._goaway_left = 0

    def feed(self, data: bytes) -> tuple[bytes, list[Goaway]]:
        out: list[bytes | memoryview] = []
        found: list[Goaway] = []
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._passing:
                n = min(self._passing, end - pos)
                out.append(view[pos : pos + n])
                pos += n
                self._passing -= n
            elif self._goaway is not None:
                n = min(self._goaway_left, end - pos)
                self._goaway += view[pos : pos + n]
                pos += n
                self._goaway_left -= n
                if not self._goaway_left:
                    found.append(_parse(bytes(self._goaway)))
                    self._goaway = None
            else:
                n = min(_HEADER - len(self._header), end - pos)
                self._header += view[pos : pos + n]
                pos += n
                if len(self._header) < _HEADER:
                    break
                length = int.from_bytes(self._header[:3], "big")
                if self._header[3] == _GOAWAY:
                    self._goaway, self._goaway_left = bytearray(), length
                    if not length:  # malformed (h2 would call it a FRAME_SIZE_ERROR)
                        found.append(Goaway(0, 1, b""))
                        self._goaway = None
                else:
                    out.append(bytes(self._header))
                    self._passing = length
                self._header.clear()
        if len(out) == 1 and not found and isinstance(out[0], memoryview) and len(out[0]) == end:
            return data, found  # the common case: one read inside one frame's payload
        return b"".join(out), found


def _parse(payload: bytes) -> Goaway:
    if len(payload) < 8:  # malformed: treat as "nothing was processed", an error
        return Goaway(0, 1, b"")
    last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
    return Goaway(last, int.from_bytes(payload[4:8], "big"), payload[8:])
