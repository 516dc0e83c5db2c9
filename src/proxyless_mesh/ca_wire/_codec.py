"""The CA's two messages in protobuf's wire format, by hand: the request has two
scalar fields and the response two repeated strings, so a protobuf runtime
would be 2 MB of memory for a few dozen lines (issue 25)."""

from __future__ import annotations

__all__ = ["decode_response", "encode_request"]

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64: negatives as ten-byte two's complement
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_request(csr_pem: str, validity_seconds: int = 0) -> bytes:
    """IstioCertificateRequest{csr = 1, validity_duration = 3}; proto3 leaves
    zero and empty values out."""
    out = b""
    if csr_pem:
        data = csr_pem.encode()
        out += b"\x0a" + _varint(len(data)) + data
    if validity_seconds:
        out += b"\x18" + _varint(validity_seconds)
    return out


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def decode_response(data: bytes) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """IstioCertificateResponse bytes -> (cert_chain, trust_bundle); unknown
    fields are skipped as protobuf does. Raises ValueError on malformed bytes."""
    chain: list[str] = []
    bundle: list[str] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, kind = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if kind == _VARINT:
            _, pos = _read_varint(data, pos)
        elif kind in (_I64, _I32):
            pos += 8 if kind == _I64 else 4
        elif kind == _LEN:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            if number in (1, 100):  # strings: UTF-8, as proto3 demands
                (chain if number == 1 else bundle).append(data[pos : pos + length].decode())
            pos += length
        else:
            raise ValueError(f"unsupported wire type {kind}")
        if pos > len(data):
            raise ValueError("truncated field")
    return tuple(chain), tuple(bundle)
