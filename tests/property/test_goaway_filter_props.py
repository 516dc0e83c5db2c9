"""grpc_wire's GoawayFilter on generated HTTP/2 frame sequences cut into
arbitrary reads: what it passes to h2 is exactly the non-GOAWAY frames, in
order, byte for byte, and it reports every GOAWAY with its last-stream-id
(reserved bit cleared), error code and debug data."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxyless_mesh.grpc_wire._goaway import Goaway, GoawayFilter


def _frame(kind: int, stream_id: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, 0]) + stream_id.to_bytes(4, "big") + payload
    )


other_frames = st.builds(
    _frame,
    st.sampled_from([0x0, 0x1, 0x3, 0x4, 0x6, 0x8]),  # DATA HEADERS RST SETTINGS PING WINDOW
    st.integers(0, 2**31 - 1),
    st.binary(max_size=300),
)
goaways = st.builds(Goaway, st.integers(0, 2**31 - 1), st.integers(0, 13), st.binary(max_size=20))


def _goaway_frame(g: Goaway, reserved_bit: bool) -> bytes:
    last = g.last_stream_id | (0x80000000 if reserved_bit else 0)
    payload = last.to_bytes(4, "big") + g.error_code.to_bytes(4, "big") + g.debug
    return _frame(0x7, 0, payload)


@given(
    st.lists(st.one_of(other_frames, st.tuples(goaways, st.booleans())), max_size=12),
    st.lists(st.integers(1, 400), max_size=40),
)
def test_goaways_are_taken_out_at_any_read_boundaries(
    frames: list[bytes | tuple[Goaway, bool]], cuts: list[int]
) -> None:
    wire = b"".join(f if isinstance(f, bytes) else _goaway_frame(*f) for f in frames)
    expected_pass = b"".join(f for f in frames if isinstance(f, bytes))
    expected_goaways = [f[0] for f in frames if not isinstance(f, bytes)]
    reads, pos = [], 0
    for n in cuts:
        reads.append(wire[pos : pos + n])
        pos += n
    reads.append(wire[pos:])
    splitter = GoawayFilter()
    passed, found = b"", []
    for read in reads:
        data, goaway = splitter.feed(read)
        passed += data
        found += goaway
    assert passed == expected_pass
    assert found == expected_goaways
