"""The CA's messages encoded and decoded by hand (ca_wire, issue 25) against
the protobuf runtime on generated messages: the request the client sends
parses to the same fields, and a response (with unknown fields, merged
messages and truncations) decodes to the same lists or is refused by both."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from proxyless_mesh import ca_wire

PEM = st.one_of(st.sampled_from(["", "-----BEGIN CERTIFICATE-----\nMIIB\n"]), st.text(max_size=40))
INT64 = st.one_of(st.integers(-5, 5), st.integers(-(2**63), 2**63 - 1))


@given(csr=PEM, validity=INT64)
def test_request_parses_as_protobuf_would(csr: str, validity: int) -> None:
    data = ca_wire.encode_request(csr, validity)
    parsed = ca_wire.CertificateRequest.FromString(data)
    assert (parsed.csr, parsed.validity_duration) == (csr, validity)
    assert (
        data == ca_wire.CertificateRequest(csr=csr, validity_duration=validity).SerializeToString()
    )


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    """Serialized responses, sometimes with unknown fields of every wire type
    and concatenated (protobuf merges repeated fields), sometimes truncated."""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        msg = ca_wire.CertificateResponse(
            cert_chain=draw(st.lists(PEM, max_size=3)), trust_bundle=draw(st.lists(PEM, max_size=2))
        )
        parts.append(msg.SerializeToString())
        unknown = draw(
            st.sampled_from(
                [
                    b"",
                    b"\x10\x96\x01",
                    b"\x19" + b"\x01" * 8,
                    b"\x15abcd",
                    b"\x22\x02hi",
                    b"\xa8\x06\x05",
                ]
            )
        )
        parts.append(unknown)
    data = b"".join(parts)
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


@given(data=responses())
def test_response_decodes_as_protobuf_does(data: bytes) -> None:
    try:
        parsed = ca_wire.CertificateResponse.FromString(data)
        expected = (tuple(parsed.cert_chain), tuple(parsed.trust_bundle))
    except DecodeError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError):
            ca_wire.decode_response(data)
    else:
        assert ca_wire.decode_response(data) == expected
