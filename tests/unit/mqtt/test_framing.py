"""Unit tests of ``FrameReader``: partial input, many packets per chunk, size limits."""

from __future__ import annotations

import pytest

from bastion.errors import MalformedPacket, ProtocolError
from bastion.mqtt import codec
from bastion.mqtt.codec import FrameReader
from bastion.mqtt.framing import MAX_PACKET_SIZE
from bastion.mqtt.packets import Publish
from bastion.mqtt.reason_codes import ReasonCode

PINGREQ = b"\xc0\x00"
PUBLISH = bytes.fromhex("30 07 0003 612f62 6869")


def drain(reader: FrameReader) -> list[tuple[int, bytes]]:
    frames = []
    while (frame := reader.next_frame()) is not None:
        frames.append(frame)
    return frames


def test_empty_reader_needs_data() -> None:
    reader = FrameReader()
    assert reader.next_frame() is None
    assert reader.buffered == 0
    assert reader.max_packet_size == MAX_PACKET_SIZE == 268_435_460


def test_one_byte_at_a_time() -> None:
    reader = FrameReader()
    for byte in PUBLISH[:-1]:
        reader.feed(bytes([byte]))
        assert reader.next_frame() is None
    reader.feed(PUBLISH[-1:])
    assert reader.next_frame() == (0x30, PUBLISH[2:])
    assert reader.next_frame() is None
    assert reader.buffered == 0


def test_many_packets_in_one_chunk() -> None:
    reader = FrameReader()
    reader.feed(PINGREQ + PUBLISH + PINGREQ + PUBLISH[:4])
    assert drain(reader) == [(0xC0, b""), (0x30, PUBLISH[2:]), (0xC0, b"")]
    assert reader.buffered == 4
    reader.feed(PUBLISH[4:])
    assert drain(reader) == [(0x30, PUBLISH[2:])]


def test_frames_feed_the_decoder() -> None:
    reader = FrameReader()
    reader.feed(PUBLISH)
    frame = reader.next_frame()
    assert frame is not None
    assert codec.decode(*frame, 4) == Publish("a/b", b"hi")


def test_multi_byte_remaining_length_split_across_feeds() -> None:
    data = codec.encode(Publish("t", b"x" * 20_000), 4)
    assert data[1] & 0x80 and data[2] & 0x80  # three length bytes
    reader = FrameReader()
    reader.feed(data[:2])
    assert reader.next_frame() is None
    reader.feed(data[2:3])
    assert reader.next_frame() is None
    reader.feed(data[3:])
    assert reader.next_frame() == (0x30, data[4:])


def test_large_stream_of_small_packets_is_linear() -> None:
    reader = FrameReader()
    count = 200_000
    reader.feed(PINGREQ * count)
    assert sum(1 for _ in iter(reader.next_frame, None)) == count
    assert reader.buffered == 0


def test_big_packet_in_small_chunks() -> None:
    data = codec.encode(Publish("t", bytes(1_000_000)), 4)
    reader = FrameReader()
    frames = []
    for start in range(0, len(data), 1000):
        reader.feed(data[start : start + 1000])
        frames.extend(drain(reader))
    assert frames == [(0x30, data[4:])]


def test_compaction_keeps_unconsumed_bytes() -> None:
    reader = FrameReader()
    chunk = PUBLISH * 10_000 + PUBLISH[:5]
    reader.feed(chunk)
    assert len(drain(reader)) == 10_000
    reader.feed(PUBLISH[5:] + PINGREQ)
    assert drain(reader) == [(0x30, PUBLISH[2:]), (0xC0, b"")]


def test_packet_too_large_is_refused_before_its_body_arrives() -> None:
    reader = FrameReader(max_packet_size=100)
    reader.feed(b"\x30\xe8\x07")  # announces 1000 bytes
    with pytest.raises(ProtocolError) as info:
        reader.next_frame()
    assert info.value.reason == ReasonCode.PACKET_TOO_LARGE


def test_maximum_counts_the_fixed_header() -> None:
    reader = FrameReader(max_packet_size=len(PUBLISH))
    reader.feed(PUBLISH)
    assert reader.next_frame() == (0x30, PUBLISH[2:])
    reader.set_max_packet_size(len(PUBLISH) - 1)
    reader.feed(PUBLISH)
    with pytest.raises(ProtocolError) as info:
        reader.next_frame()
    assert info.value.reason == 0x95


@pytest.mark.parametrize("size", [0, 1, MAX_PACKET_SIZE + 1])
def test_maximum_packet_size_bounds(size: int) -> None:
    with pytest.raises(ValueError):
        FrameReader(size)
    with pytest.raises(ValueError):
        FrameReader().set_max_packet_size(size)


def test_five_byte_remaining_length_is_malformed_without_waiting() -> None:
    reader = FrameReader()
    reader.feed(b"\x30\xff\xff\xff\xff")
    with pytest.raises(MalformedPacket):
        reader.next_frame()


def test_four_continuation_bytes_are_malformed_even_before_the_fifth() -> None:
    reader = FrameReader()
    reader.feed(b"\x30\x80\x80\x80")
    assert reader.next_frame() is None
    reader.feed(b"\x80")
    with pytest.raises(MalformedPacket):
        reader.next_frame()


def test_non_minimal_remaining_length_is_malformed() -> None:
    reader = FrameReader()
    reader.feed(b"\xc0\x80\x00")
    with pytest.raises(MalformedPacket):
        reader.next_frame()


def test_largest_remaining_length_is_accepted_as_a_header() -> None:
    reader = FrameReader()
    reader.feed(b"\x30\xff\xff\xff\x7f")
    assert reader.next_frame() is None  # waits for 268_435_455 bytes
