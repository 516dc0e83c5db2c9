"""A sync TLS network stream that makes fewer system calls per request.

httpcore's sync stream sets the socket's timeout before every read and write,
and Python's `settimeout` flips O_NONBLOCK with an ioctl each time. On a
socket with a timeout, Python's TLS read then first tries to read (EAGAIN
while the answer is on its way), polls, and reads again. On a kept-alive
HTTP/1.1 connection (head and body sent as one record, `_coalescing.py`) a
request cost, by strace: ioctl x2, poll x3, write, read x2. This stream keeps
the socket non-blocking for good and polls before a read only when OpenSSL
holds no decrypted bytes: write, poll, read, plus httpcore's idle check's
poll. `PROXYLESS_MESH_TLS_STREAM=httpcore` turns it off (httpcore's own
stream, as before); `benchmarks/README.md` has the A/B.

Timeouts mean what they mean in httpcore: each read or write may wait that
long (None: no limit) before ReadTimeout / WriteTimeout.
"""

from __future__ import annotations

import os
import select
import ssl
import time
from typing import Any

import httpcore

__all__ = ["TlsSocketStream", "direct"]

RECORD = 16 * 1024
"""A TLS read returns at most one record's plaintext (16 KiB): asking for
httpcore's 64 KiB makes Python allocate, then shrink, a buffer that large."""


class TlsSocketStream(httpcore.NetworkStream):
    """httpcore's NetworkStream over a connected `ssl.SSLSocket`, kept non-blocking."""

    __slots__ = ("_readable", "_sock", "_writable")

    def __init__(self, sock: ssl.SSLSocket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._readable = select.poll()
        self._readable.register(sock.fileno(), select.POLLIN)
        self._writable: Any = None  # made on the first write that must wait

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        sock = self._sock
        try:
            if sock.pending() or self._readable.poll(None if timeout is None else timeout * 1e3):
                try:
                    return sock.recv(max_bytes if max_bytes < RECORD else RECORD)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass  # a record in pieces, or only a TLS 1.3 ticket: wait on
                return self._read_waiting(max_bytes, timeout)
        except OSError as exc:
            raise httpcore.ReadError(exc) from exc
        raise httpcore.ReadTimeout("timed out")

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            sent = self._sock.send(buffer)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0  # the send buffer is full: wait below
        except OSError as exc:
            raise httpcore.WriteError(exc) from exc
        if sent < len(buffer):
            self._write_waiting(buffer[sent:], timeout)

    def _read_waiting(self, max_bytes: int, timeout: float | None) -> bytes:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self._sock.recv(min(max_bytes, RECORD))
            except ssl.SSLWantReadError:
                self._wait(False, deadline, httpcore.ReadTimeout)
            except ssl.SSLWantWriteError:
                self._wait(True, deadline, httpcore.ReadTimeout)

    def _write_waiting(self, buffer: bytes, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while buffer:
                try:
                    buffer = buffer[self._sock.send(buffer) :]
                except ssl.SSLWantWriteError:
                    self._wait(True, deadline, httpcore.WriteTimeout)
                except ssl.SSLWantReadError:
                    self._wait(False, deadline, httpcore.WriteTimeout)
        except OSError as exc:
            raise httpcore.WriteError(exc) from exc

    def _wait(self, writing: bool, deadline: float | None, timeout: type[Exception]) -> None:
        poller = self._readable
        if writing:
            poller = self._writable
            if poller is None:
                poller = self._writable = select.poll()
                poller.register(self._sock.fileno(), select.POLLOUT)
        left = None if deadline is None else deadline - time.monotonic()
        if (left is not None and left <= 0) or not poller.poll(
            None if left is None else left * 1e3
        ):
            raise timeout("timed out")

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        raise NotImplementedError("TLS inside mesh mTLS")

    def get_extra_info(self, info: str) -> Any:
        sock = self._sock
        if info in ("ssl_object", "socket"):
            return sock
        if info == "client_addr":
            return sock.getsockname()
        if info == "server_addr":
            return sock.getpeername()
        if info == "is_readable":  # httpcore's idle check: closed by the peer?
            return sock.fileno() == -1 or sock.pending() > 0 or bool(self._readable.poll(0))
        return None


def direct(stream: httpcore.NetworkStream) -> httpcore.NetworkStream:
    """`stream` (httpcore's, after start_tls) as a TlsSocketStream when it is
    a plain SSLSocket stream and the switch is on; else unchanged."""
    sock = stream.get_extra_info("socket")
    if DIRECT and isinstance(sock, ssl.SSLSocket):
        return TlsSocketStream(sock)
    return stream


DIRECT = os.environ.get("PROXYLESS_MESH_TLS_STREAM", "").lower() != "httpcore"
"""Whether mTLS connections use TlsSocketStream (the default); read at import."""
