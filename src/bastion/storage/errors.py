"""Errors of the storage layer, and the mapping of ``sqlite3`` failures onto them.

Every module of ``bastion.storage`` raises these; callers (the broker, ``cli/keys.py``) pick
an MQTT reason code (``reason``) or an exit status from the class, never from message text.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bastion.errors import BastionError

__all__ = [
    "DatabaseUnusableError",
    "KeyConfigError",
    "KeyRetiredError",
    "KeyStateError",
    "MasterKeyMismatchError",
    "RecordTamperedError",
    "StorageBusyError",
    "StorageError",
    "StorageFullError",
    "StorageIOError",
    "StorageReadOnlyError",
    "UnknownKeyError",
    "sqlite_errors",
    "translate_sqlite_error",
]

UNSPECIFIED_ERROR = 0x80
QUOTA_EXCEEDED = 0x97

# The message the key guard triggers raise (see ``registry.py``); recognised below.
KEY_GUARD_MESSAGE = "bastion: record sealed under a retired or unknown data key"


class StorageError(BastionError):
    """Persistence failed or refused; ``reason`` is the MQTT 5 reason code to answer with."""

    reason: int = UNSPECIFIED_ERROR


class DatabaseUnusableError(StorageError):
    """The database file is not one this build may open: corrupt, truncated, foreign, newer.

    The file is left exactly as it was found; the message names it and what to do.
    """


class RecordTamperedError(StorageError):
    """A sealed record failed authentication (edited, swapped or moved) and was not opened."""


class UnknownKeyError(RecordTamperedError):
    """A sealed record names a data key that the key ring does not hold."""


class KeyConfigError(StorageError):
    """The master key is missing, unreadable, malformed or unsafe to use."""


class MasterKeyMismatchError(KeyConfigError):
    """The data keys of a database were wrapped by a master key the provider does not have."""


class KeyStateError(StorageError):
    """A key operation was refused in the current state (e.g. retiring a key still in use)."""


class KeyRetiredError(StorageError):
    """A write used a data key that has been retired meanwhile: refresh the key ring, retry."""


class StorageFullError(StorageError):
    """The disk, or the configured maximum database size, is full (MQTT: quota exceeded)."""

    reason = QUOTA_EXCEEDED


class StorageReadOnlyError(StorageError):
    """The database file or its directory cannot be written."""


class StorageIOError(StorageError):
    """The operating system reported an I/O error, or the file could not be opened."""


class StorageBusyError(StorageError):
    """Another connection held a lock for longer than the busy timeout."""


# Primary SQLite result codes (extended codes keep them in their low byte).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_CONSTRAINT = 19
_SQLITE_NOTADB = 26

_BY_CODE: dict[int, tuple[type[StorageError], str]] = {
    _SQLITE_FULL: (StorageFullError, "the disk or the maximum database size is full"),
    _SQLITE_READONLY: (StorageReadOnlyError, "the database is read-only"),
    _SQLITE_IOERR: (StorageIOError, "disk I/O error"),
    _SQLITE_CANTOPEN: (StorageIOError, "cannot open the database file"),
    _SQLITE_BUSY: (StorageBusyError, "the database is locked by another connection"),
    _SQLITE_LOCKED: (StorageBusyError, "the database table is locked"),
    _SQLITE_CORRUPT: (DatabaseUnusableError, "the database file is corrupt"),
    _SQLITE_NOTADB: (DatabaseUnusableError, "the file is not a SQLite database"),
}


def translate_sqlite_error(error: sqlite3.Error, path: Path) -> StorageError:
    """The ``StorageError`` for ``error``, with a one-line message naming ``path``."""
    code = getattr(error, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if KEY_GUARD_MESSAGE in str(error):
        return KeyRetiredError(f"{path}: {KEY_GUARD_MESSAGE.removeprefix('bastion: ')}")
    if primary == _SQLITE_CONSTRAINT or primary is None:
        return StorageError(f"{path}: {error}")
    kind, what = _BY_CODE.get(primary, (StorageError, str(error)))
    if kind is DatabaseUnusableError:
        what += " (move it aside and restore a backup; Bastion never deletes it)"
    return kind(f"{path}: {what}")


@contextmanager
def sqlite_errors(path: Path) -> Iterator[None]:
    """Re-raise any ``sqlite3.Error`` in the block as the matching ``StorageError``."""
    try:
        yield
    except sqlite3.Error as error:
        raise translate_sqlite_error(error, path) from error
