"""Unit tests for ``storage/crypto.py``: sealing, opening and what authentication binds.

A record moved to another row, table or column, relabelled with another key id, or edited
in any byte must raise ``RecordTamperedError``; nothing else may come out of ``open``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.storage.crypto import (
    OVERHEAD,
    KeyRing,
    encode_fields,
    new_key,
    pack_key,
    record_associated_data,
)
from bastion.storage.errors import RecordTamperedError, StorageError, UnknownKeyError


def ring(*ids: str) -> KeyRing:
    keys = {key_id: new_key() for key_id in ids or ("dk-1",)}
    return KeyRing(keys, current=next(iter(keys)))


def test_round_trip() -> None:
    keys = ring()
    key_id, blob = keys.seal("messages", b"\x01\x02", b"hello")
    assert key_id == "dk-1"
    assert len(blob) == len(b"hello") + OVERHEAD
    assert keys.open("messages", b"\x01\x02", key_id, blob) == b"hello"


def test_same_plaintext_seals_differently() -> None:
    keys = ring()
    assert keys.seal("t", "pk", b"same")[1] != keys.seal("t", "pk", b"same")[1]


def test_every_flipped_byte_is_detected() -> None:
    keys = ring()
    key_id, blob = keys.seal("messages", "m1", b"payload")
    for index in range(len(blob)):
        edited = bytearray(blob)
        edited[index] ^= 0x01
        with pytest.raises(RecordTamperedError):
            keys.open("messages", "m1", key_id, bytes(edited))


def test_truncated_and_empty_blobs_are_tampered() -> None:
    keys = ring()
    key_id, blob = keys.seal("messages", "m1", b"payload")
    for cut in (blob[:-1], blob[: OVERHEAD - 1], b""):
        with pytest.raises(RecordTamperedError):
            keys.open("messages", "m1", key_id, cut)


def test_swapped_primary_key_is_detected() -> None:
    keys = ring()
    key_id, blob = keys.seal("messages", "m1", b"for m1")
    with pytest.raises(RecordTamperedError, match="authentication failed"):
        keys.open("messages", "m2", key_id, blob)


def test_swapped_table_is_detected() -> None:
    keys = ring()
    key_id, blob = keys.seal("messages", "m1", b"payload")
    with pytest.raises(RecordTamperedError):
        keys.open("retained", "m1", key_id, blob)


def test_swapped_column_is_detected() -> None:
    keys = ring()
    key_id, blob = keys.seal("messages", "m1", b"payload", column="payload")
    with pytest.raises(RecordTamperedError):
        keys.open("messages", "m1", key_id, blob, column="properties")


def test_relabelled_key_id_is_detected() -> None:
    keys = ring("dk-a", "dk-b")
    key_id, blob = keys.seal("messages", "m1", b"payload")
    assert key_id == "dk-a"
    with pytest.raises(RecordTamperedError):
        keys.open("messages", "m1", "dk-b", blob)


def test_unknown_key_id_is_tampered_too() -> None:
    keys = ring()
    key_id, blob = keys.seal("messages", "m1", b"payload")
    with pytest.raises(UnknownKeyError, match="unknown data key"):
        keys.open("messages", "m1", "dk-unknown", blob)
    other = ring()  # same id, different key material
    with pytest.raises(RecordTamperedError):
        other.open("messages", "m1", key_id, blob)


def test_primary_key_types_are_distinct() -> None:
    keys = ring()
    key_id, blob = keys.seal("t", "1", b"x")
    for other in (b"1", 1):
        with pytest.raises(RecordTamperedError):
            keys.open("t", other, key_id, blob)
    with pytest.raises(TypeError):
        pack_key(True)


def test_composite_keys_are_unambiguous() -> None:
    assert pack_key("ab", "c") != pack_key("a", "bc")
    assert pack_key(b"a", 1) != pack_key("a", 1)
    assert record_associated_data("ab", "c", "k", "dk") != record_associated_data(
        "a", "bc", "k", "dk"
    )


@given(
    st.lists(st.binary(max_size=8), max_size=4),
    st.lists(st.binary(max_size=8), max_size=4),
)
def test_encoded_fields_collide_only_when_equal(left: list[bytes], right: list[bytes]) -> None:
    assert (encode_fields(*left) == encode_fields(*right)) == (left == right)


@given(
    table=st.text(min_size=1, max_size=20),
    column=st.text(max_size=10),
    pk=st.one_of(st.binary(max_size=40), st.text(max_size=40), st.integers(-(2**63), 2**63 - 1)),
    plaintext=st.binary(max_size=2048),
)
def test_round_trip_property(
    table: str, column: str, pk: bytes | str | int, plaintext: bytes
) -> None:
    keys = KeyRing({"dk-p": bytes(range(32))}, current="dk-p")
    key_id, blob = keys.seal(table, pk, plaintext, column=column)
    assert keys.open(table, pk, key_id, blob, column=column) == plaintext
    if plaintext:
        assert plaintext not in blob or len(plaintext) < 8


def test_ring_management() -> None:
    keys = KeyRing()
    assert keys.current_id is None
    with pytest.raises(StorageError, match="no current data key"):
        keys.seal("t", "k", b"x")
    keys.add("dk-1", new_key())
    with pytest.raises(StorageError, match="not in the key ring"):
        keys.set_current("dk-2")
    keys.set_current("dk-1")
    with pytest.raises(StorageError, match="is current"):
        keys.discard("dk-1")
    with pytest.raises(StorageError, match="expected 32"):
        keys.add("dk-short", b"short")
    keys.add("dk-2", new_key())
    keys.discard("dk-2")
    assert keys.key_ids() == {"dk-1"}
    assert "dk-1" in keys
    assert len(keys) == 1


def test_seals_are_counted_per_key() -> None:
    keys = ring("dk-a", "dk-b")
    for _ in range(3):
        keys.seal("t", "k", b"x")
    keys.set_current("dk-b")
    keys.seal("t", "k", b"x")
    assert keys.take_seals() == {"dk-a": 3, "dk-b": 1}
    assert keys.take_seals() == {}
