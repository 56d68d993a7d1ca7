"""Record encryption at rest: AES-256-GCM under data keys, bound to table, column and key.

``KeyRing`` holds the unwrapped data keys (``datakeys.py`` fills it from the database, whose
keys the master key of ``keys.py`` wraps); ``registry.py`` and the store seal and open with it.
"""

from __future__ import annotations

import functools
import os
import secrets
import struct
from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bastion.storage.errors import RecordTamperedError, StorageError, UnknownKeyError

__all__ = [
    "FORMAT_VERSION",
    "KEY_SIZE",
    "NONCE_SIZE",
    "OVERHEAD",
    "SEALS_PER_KEY_LIMIT",
    "KeyRing",
    "PrimaryKey",
    "encode_fields",
    "new_key",
    "new_key_id",
    "pack_key",
    "record_associated_data",
]

FORMAT_VERSION = 1
"""Version of the sealed-record layout; the first byte of every blob and part of its AD."""
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE
"""Bytes a sealed blob adds to its plaintext: version, nonce, authentication tag."""

# Nonces are 96 random bits per record. NIST SP 800-38D (8.3) caps a key used with random
# nonces at 2**32 encryptions, which keeps the chance of a repeated nonce below 2**-32; a
# repeat would leak the XOR of two plaintexts and allow forgeries under that key. Data keys
# count their seals (``KeyRing.seals``, persisted by the store) and rotation (``bastion keys
# rotate``) starts a fresh key long before the limit: that is how the bound is honoured.
SEALS_PER_KEY_LIMIT = 2**32

_VERSION_BYTE = bytes([FORMAT_VERSION])
_RECORD_LABEL = b"bastion-record"
_LENGTH = struct.Struct(">I")
_INTEGER = struct.Struct(">q")

PrimaryKey = bytes | str | int
"""A record's primary key as bound into its associated data (see ``pack_key`` for tuples)."""


def encode_fields(*fields: bytes) -> bytes:
    """Length-prefixed concatenation: unambiguous, so distinct field lists never collide."""
    return b"".join(_LENGTH.pack(len(field)) + field for field in fields)


def _tagged(value: PrimaryKey) -> bytes:
    # bool is an int subclass; refusing it keeps True and 1 from meaning the same key.
    if isinstance(value, bytes):
        return b"b" + value
    if isinstance(value, str):
        return b"s" + value.encode("utf-8")
    if isinstance(value, int) and not isinstance(value, bool):
        return b"i" + _INTEGER.pack(value)
    raise TypeError(f"a primary key part must be bytes, str or int, not {type(value).__name__}")


def pack_key(*parts: PrimaryKey) -> bytes:
    """A composite primary key as one canonical byte string (type-tagged, length-prefixed)."""
    return encode_fields(*(_tagged(part) for part in parts))


def record_associated_data(table: str, column: str, pk: PrimaryKey, key_id: str) -> bytes:
    """What a sealed record is bound to: format version, table, column, primary key, key id.

    Editing any of them (moving a blob to another row, table or column, or relabelling its
    key) makes authentication fail.
    """
    head, tail = _associated_parts(table, column, key_id)
    tagged = _tagged(pk)
    return head + _LENGTH.pack(len(tagged)) + tagged + tail


@functools.lru_cache(maxsize=256)
def _associated_parts(table: str, column: str, key_id: str) -> tuple[bytes, bytes]:
    """The encoded fields before and after the primary key (few distinct: cached, since
    every seal and open needs them)."""
    head = encode_fields(
        _RECORD_LABEL, _VERSION_BYTE, table.encode("utf-8"), column.encode("utf-8")
    )
    return head, encode_fields(key_id.encode("utf-8"))


def new_key() -> bytes:
    """A fresh random 256-bit key."""
    return os.urandom(KEY_SIZE)


def new_key_id(prefix: str, taken: Iterable[str] = ()) -> str:
    """A short random identifier such as ``dk-1f2e3d4c``, distinct from every id in ``taken``."""
    used = set(taken)
    while True:
        key_id = f"{prefix}-{secrets.token_hex(4)}"
        if key_id not in used:
            return key_id


class KeyRing:
    """Unwrapped data keys by id, one of them current: seals with it, opens with any.

    AESGCM objects are built once per key and reused, so sealing costs one AEAD call and
    16 random bytes; nothing is derived per record.
    """

    __slots__ = ("_aeads", "_current", "_seals")

    def __init__(self, keys: Mapping[str, bytes] | None = None, current: str | None = None) -> None:
        self._aeads: dict[str, AESGCM] = {}
        self._seals: dict[str, int] = {}
        self._current: str | None = None
        for key_id, key in (keys or {}).items():
            self.add(key_id, key)
        if current is not None:
            self.set_current(current)

    @property
    def current_id(self) -> str | None:
        """The id of the key that seals, or None while the ring is empty."""
        return self._current

    def key_ids(self) -> frozenset[str]:
        """Ids of every key held."""
        return frozenset(self._aeads)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._aeads

    def __len__(self) -> int:
        return len(self._aeads)

    def add(self, key_id: str, key: bytes) -> None:
        """Hold ``key`` under ``key_id`` (replacing nothing: ids are unique)."""
        if len(key) != KEY_SIZE:
            raise StorageError(f"data key {key_id} is {len(key)} bytes, expected {KEY_SIZE}")
        if not key_id or not key_id.isascii():
            raise StorageError(f"invalid data key id {key_id!r}")
        if key_id not in self._aeads:
            self._aeads[key_id] = AESGCM(key)
            self._seals.setdefault(key_id, 0)

    def discard(self, key_id: str) -> None:
        """Forget ``key_id`` (a retired key); the current key cannot be discarded."""
        if key_id == self._current:
            raise StorageError(f"data key {key_id} is current and cannot be dropped")
        self._aeads.pop(key_id, None)

    def set_current(self, key_id: str) -> None:
        """Seal with ``key_id`` from now on."""
        if key_id not in self._aeads:
            raise StorageError(f"data key {key_id} is not in the key ring")
        self._current = key_id

    def seals(self) -> dict[str, int]:
        """Records sealed per key by this ring since it was made (or since ``take_seals``)."""
        return dict(self._seals)

    def take_seals(self) -> dict[str, int]:
        """The seal counts, reset to zero: what a store adds to the persisted totals."""
        counts = {key_id: count for key_id, count in self._seals.items() if count}
        self._seals = dict.fromkeys(self._seals, 0)
        return counts

    def seal(
        self, table: str, pk: PrimaryKey, plaintext: bytes, *, column: str = ""
    ) -> tuple[str, bytes]:
        """Encrypt ``plaintext`` for row ``pk`` of ``table`` (``column``) under the current key.

        Returns ``(key_id, blob)``; both are stored with the record.
        """
        key_id = self._current
        if key_id is None:
            raise StorageError("no current data key: the key ring is empty")
        nonce = os.urandom(NONCE_SIZE)
        aad = record_associated_data(table, column, pk, key_id)
        sealed = self._aeads[key_id].encrypt(nonce, plaintext, aad)
        self._seals[key_id] += 1
        return key_id, _VERSION_BYTE + nonce + sealed

    def open(
        self, table: str, pk: PrimaryKey, key_id: str, blob: bytes, *, column: str = ""
    ) -> bytes:
        """The plaintext of ``blob``; ``RecordTamperedError`` if it does not authenticate.

        ``UnknownKeyError`` (a ``RecordTamperedError``) if ``key_id`` is not in the ring.
        """
        aead = self._aeads.get(key_id)
        if aead is None:
            raise UnknownKeyError(f"{_where(table, column, pk)}: unknown data key {key_id!r}")
        if len(blob) < OVERHEAD or blob[:1] != _VERSION_BYTE:
            raise RecordTamperedError(f"{_where(table, column, pk)}: not a sealed record")
        aad = record_associated_data(table, column, pk, key_id)
        try:
            return aead.decrypt(blob[1 : 1 + NONCE_SIZE], blob[1 + NONCE_SIZE :], aad)
        except InvalidTag:
            raise RecordTamperedError(
                f"{_where(table, column, pk)}: authentication failed (edited, moved or "
                f"relabelled ciphertext)"
            ) from None


def _where(table: str, column: str, pk: PrimaryKey) -> str:
    shown = pk.hex() if isinstance(pk, bytes) else repr(pk)
    return f"{table}.{column} [{shown}]" if column else f"{table} [{shown}]"
