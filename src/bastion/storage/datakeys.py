"""Data keys in the database: create, load, rotate, re-wrap under a new master key, retire.

Each data key is stored wrapped by a master key of a ``KeyProvider`` (``keys.py``), with
associated data binding its id and the master id; ``crypto.KeyRing`` holds them unwrapped.
``registry.py`` counts the records each key seals, which decides when it may be retired.
Master-key rotation and retirement take every database that shares the master key (the
broker's ``bastion.db`` and the data logger's ``logger.db``).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from bastion.storage.crypto import (
    FORMAT_VERSION,
    SEALS_PER_KEY_LIMIT,
    KeyRing,
    encode_fields,
    new_key,
    new_key_id,
)
from bastion.storage.database import Database, get_meta, set_meta
from bastion.storage.errors import (
    KeyConfigError,
    KeyStateError,
    MasterKeyMismatchError,
    StorageError,
    sqlite_errors,
)
from bastion.storage.keys import FileKeyProvider, KeyProvider, RotatableKeyProvider
from bastion.storage.registry import count_by_key

__all__ = [
    "DataKeyInfo",
    "DataKeyStatus",
    "MasterRotation",
    "add_seal_counts",
    "data_key_status",
    "ensure_data_key",
    "key_epoch",
    "list_data_keys",
    "load_keyring",
    "master_key_usage",
    "retire_data_key",
    "retire_master_key",
    "rewrap_data_keys",
    "rotate_data_key",
    "rotate_master_key",
    "wrap_associated_data",
]

CURRENT_KEY = "current_data_key"
KEY_EPOCH = "key_epoch"
DATA_KEY_PREFIX = "dk"
KeyState = Literal["active", "retired"]


@dataclass(frozen=True, slots=True)
class DataKeyInfo:
    """One row of the data-key table (without key material)."""

    id: str
    state: KeyState
    master_id: str
    created_at: dt.datetime
    retired_at: dt.datetime | None
    sealed: int
    """Records sealed under it so far (persisted by stores from time to time)."""
    current: bool


@dataclass(frozen=True, slots=True)
class DataKeyStatus:
    """A data key, how many records it still seals, and whether it may be retired."""

    key: DataKeyInfo
    records: int
    retirable: bool
    note: str


@dataclass(frozen=True, slots=True)
class MasterRotation:
    """What ``rotate_master_key`` did (``rewrapped``: in the first database; ``also``: how
    many in each of the others, in order)."""

    current: str
    created: bool
    previous: frozenset[str]
    rewrapped: int
    also: tuple[int, ...] = ()


def wrap_associated_data(data_key_id: str, master_id: str) -> bytes:
    """What a wrapped data key is bound to: format version, its own id, the master's id."""
    return encode_fields(
        b"bastion-data-key",
        bytes([FORMAT_VERSION]),
        data_key_id.encode("utf-8"),
        master_id.encode("utf-8"),
    )


def key_epoch(connection: sqlite3.Connection) -> int:
    """A counter bumped by every key change, so running stores notice rotations cheaply."""
    return int(get_meta(connection, KEY_EPOCH) or 0)


def _bump_epoch(connection: sqlite3.Connection) -> None:
    set_meta(connection, KEY_EPOCH, str(key_epoch(connection) + 1))


def _when(seconds: object) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(str(seconds)), dt.UTC)


def list_data_keys(connection: sqlite3.Connection) -> list[DataKeyInfo]:
    """Every data key, in the order they were made (oldest first)."""
    current = get_meta(connection, CURRENT_KEY)
    rows = connection.execute(
        "SELECT id, state, master_id, created_at, retired_at, sealed FROM bastion_data_keys "
        "ORDER BY seq"
    ).fetchall()
    return [
        DataKeyInfo(
            id=str(key_id),
            state="active" if state == "active" else "retired",
            master_id=str(master_id),
            created_at=_when(created),
            retired_at=None if retired is None else _when(retired),
            sealed=int(sealed),
            current=key_id == current,
        )
        for key_id, state, master_id, created, retired, sealed in rows
    ]


def master_key_usage(connection: sqlite3.Connection) -> dict[str, int]:
    """How many active data keys each master key wraps."""
    rows = connection.execute(
        "SELECT master_id, COUNT(*) FROM bastion_data_keys WHERE state = 'active' "
        "GROUP BY master_id"
    )
    return {str(master_id): int(count) for master_id, count in rows}


def load_keyring(
    database: Database, provider: KeyProvider, keyring: KeyRing | None = None
) -> KeyRing:
    """Unwrap the active data keys into ``keyring`` (updated in place) or a new ring.

    ``MasterKeyMismatchError`` if the provider lacks a master key the database needs.
    """
    ring = keyring if keyring is not None else KeyRing()
    with database.snapshot() as connection:
        current = get_meta(connection, CURRENT_KEY)
        rows = connection.execute(
            "SELECT id, master_id, wrapped FROM bastion_data_keys WHERE state = 'active'"
        ).fetchall()
    _check_masters(database, provider, {str(row[1]) for row in rows})
    active = set()
    for key_id, master_id, wrapped in rows:
        active.add(str(key_id))
        if key_id not in ring:
            ad = wrap_associated_data(str(key_id), str(master_id))
            ring.add(str(key_id), provider.unwrap(str(master_id), bytes(wrapped), ad))
    if current is not None:
        if current not in active:
            raise StorageError(f"{database.path}: the current data key {current} is not active")
        ring.set_current(current)
    for key_id in ring.key_ids() - active:
        ring.discard(key_id)
    return ring


def _check_masters(database: Database, provider: KeyProvider, needed: set[str]) -> None:
    missing = needed - provider.master_ids()
    if missing and isinstance(provider, FileKeyProvider):
        provider.reload()  # rotated by another process since we read it
        missing = needed - provider.master_ids()
    if missing:
        held = ", ".join(sorted(provider.master_ids()))
        raise MasterKeyMismatchError(
            f"wrong master key for data directory {database.path.parent}: its data keys are "
            f"wrapped by master key {', '.join(sorted(missing))}, but {provider.description} "
            f"holds {held}; use the key file or environment variable it was created with"
        )


def _new_wrapped_key(database: Database, provider: KeyProvider) -> tuple[str, str, bytes]:
    """``(key_id, master_id, wrapped)`` for a fresh data key, wrapped before any write
    transaction starts (a remote KMS call never holds the database lock)."""
    with database.snapshot() as connection:
        taken = [str(row[0]) for row in connection.execute("SELECT id FROM bastion_data_keys")]
    key_id = new_key_id(DATA_KEY_PREFIX, taken)
    master_id = provider.current_master_id
    wrapped = provider.wrap(master_id, new_key(), wrap_associated_data(key_id, master_id))
    return key_id, master_id, wrapped


def _insert_key(connection: sqlite3.Connection, new: tuple[str, str, bytes]) -> str:
    """Store a key made by ``_new_wrapped_key`` and make it current; returns its id."""
    key_id, master_id, wrapped = new
    connection.execute(
        "INSERT INTO bastion_data_keys (id, seq, state, master_id, wrapped, created_at) "
        "VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM bastion_data_keys), 'active', "
        "?, ?, ?)",
        (key_id, master_id, wrapped, int(time.time())),
    )
    set_meta(connection, CURRENT_KEY, key_id)
    _bump_epoch(connection)
    return key_id


def ensure_data_key(database: Database, provider: KeyProvider) -> KeyRing:
    """The key ring, after creating the first data key if the database has none."""
    ring = load_keyring(database, provider)
    if ring.current_id is not None:
        return ring
    new = _new_wrapped_key(database, provider)
    with database.transaction() as connection:
        if get_meta(connection, CURRENT_KEY) is None:  # else another process was quicker
            _insert_key(connection, new)
    return load_keyring(database, provider, ring)


def rotate_data_key(database: Database, provider: KeyProvider) -> DataKeyInfo:
    """Make a new data key current; the old ones stay active until re-encryption empties
    them and they are retired."""
    load_keyring(database, provider)  # refuses a wrong master key before adding anything
    new = _new_wrapped_key(database, provider)
    with database.transaction() as connection:
        key_id = _insert_key(connection, new)
        return next(info for info in list_data_keys(connection) if info.id == key_id)


def rewrap_data_keys(database: Database, provider: KeyProvider) -> int:
    """Wrap every active data key under the provider's current master key; returns how many
    were re-wrapped."""
    target = provider.current_master_id
    with database.snapshot() as connection:
        rows = connection.execute(
            "SELECT id, master_id, wrapped FROM bastion_data_keys "
            "WHERE state = 'active' AND master_id != ?",
            (target,),
        ).fetchall()
    _check_masters(database, provider, {str(row[1]) for row in rows})
    updates = []
    for key_id, master_id, wrapped in rows:
        key = provider.unwrap(
            str(master_id), bytes(wrapped), wrap_associated_data(str(key_id), str(master_id))
        )
        rewrapped = provider.wrap(target, key, wrap_associated_data(str(key_id), target))
        updates.append((target, rewrapped, str(key_id), str(master_id)))
    if not updates:
        return 0
    with database.transaction() as connection:
        for update in updates:
            connection.execute(
                "UPDATE bastion_data_keys SET master_id = ?, wrapped = ? "
                "WHERE id = ? AND master_id = ? AND state = 'active'",
                update,
            )
        _bump_epoch(connection)
    return len(updates)


def rotate_master_key(
    database: Database, provider: KeyProvider, *, also: Sequence[Database] = ()
) -> MasterRotation:
    """A new master key (if the provider can make one) and every data key of ``database``
    and of the databases ``also`` sharing its master key re-wrapped by it.

    Every database must open with the provider before anything changes. A provider that
    cannot create keys (the environment) must already offer the new key as current;
    otherwise this is refused with instructions.
    """
    load_keyring(database, provider)
    for other in also:
        _load_other(other, provider)
    previous: set[str] = set()
    for each in (database, *also):
        with each.snapshot() as connection:
            previous |= set(master_key_usage(connection))
    created = False
    if isinstance(provider, RotatableKeyProvider):
        provider.add_master_key()
        created = True
    elif previous <= {provider.current_master_id}:
        raise KeyStateError(
            f"{provider.description} cannot create master keys: put a new key first in it, "
            f"then a comma and the current key, and run `bastion keys rotate --master` again"
        )
    count = rewrap_data_keys(database, provider)
    others = tuple(rewrap_data_keys(other, provider) for other in also)
    return MasterRotation(provider.current_master_id, created, frozenset(previous), count, others)


def _load_other(database: Database, provider: KeyProvider) -> None:
    """``load_keyring`` for a database beside the main one, its errors naming the file."""
    try:
        load_keyring(database, provider)
    except MasterKeyMismatchError as error:
        raise MasterKeyMismatchError(f"{database.path}: {error}") from None


def data_key_status(database: Database) -> list[DataKeyStatus]:
    """Every data key with its record count and whether (and how) it can be retired."""
    with database.snapshot() as connection:
        keys = list_data_keys(connection)
        counts = count_by_key(connection)
    return [_status(key, counts.get(key.id, 0)) for key in keys]


def _status(key: DataKeyInfo, records: int) -> DataKeyStatus:
    if key.state == "retired":
        return DataKeyStatus(key, records, False, "retired")
    if key.current:
        note = "current: seals new records"
        if key.sealed > SEALS_PER_KEY_LIMIT // 2:
            note += f"; rotate soon ({key.sealed} seals, limit {SEALS_PER_KEY_LIMIT})"
        return DataKeyStatus(key, records, False, note)
    if records:
        return DataKeyStatus(
            key, records, False, "still in use: the re-encryption job is moving its records"
        )
    return DataKeyStatus(key, records, True, f"unused: `bastion keys retire {key.id}`")


def retire_data_key(database: Database, key_id: str) -> DataKeyInfo:
    """Retire an unused, non-current data key: its key material is erased from the table.

    Refused with ``KeyStateError`` while records still use it or while it is current.
    """
    with sqlite_errors(database.path):
        database.connection.execute("PRAGMA secure_delete = ON")  # overwrite the erased key
    try:
        with database.transaction() as connection:
            keys = {key.id: key for key in list_data_keys(connection)}
            key = keys.get(key_id)
            if key is None:
                raise StorageError(
                    f"{database.path}: no data key {key_id!r} (`bastion keys status` lists them)"
                )
            _check_retirable(key, count_by_key(connection).get(key_id, 0))
            connection.execute(
                "UPDATE bastion_data_keys SET state = 'retired', wrapped = NULL, "
                "retired_at = ? WHERE id = ?",
                (int(time.time()), key_id),
            )
            _bump_epoch(connection)
            retired = next(info for info in list_data_keys(connection) if info.id == key_id)
    finally:
        with sqlite_errors(database.path):
            database.connection.execute("PRAGMA secure_delete = OFF")
    return retired


def _check_retirable(key: DataKeyInfo, records: int) -> None:
    if key.state == "retired":
        raise KeyStateError(f"data key {key.id} is already retired")
    if key.current:
        raise KeyStateError(
            f"data key {key.id} is the current key: run `bastion keys rotate` first"
        )
    if records:
        raise KeyStateError(
            f"data key {key.id} still seals {records} record{'s' if records != 1 else ''}: "
            f"wait for the re-encryption job (`bastion keys status` says when) or run "
            f"`bastion keys reencrypt`"
        )


def retire_master_key(
    database: Database,
    provider: KeyProvider,
    master_id: str,
    *,
    also: Sequence[Database] = (),
) -> None:
    """Delete an old master key from the key file once no data key of ``database`` or of
    the databases ``also`` sharing it (the data logger's) uses it.

    Refused with ``KeyStateError`` while one does: this never re-wraps keys itself (that is
    ``rotate_master_key``), it only deletes a key nothing needs. Databases elsewhere (a key
    file shared by several data directories, a PostgreSQL logger store) are not seen here.
    """
    if not isinstance(provider, RotatableKeyProvider):
        raise KeyConfigError(f"{provider.description} cannot delete master keys")
    if master_id not in provider.master_ids():
        raise StorageError(f"{provider.description} has no master key {master_id!r}")
    if master_id == provider.current_master_id:
        raise KeyStateError(
            f"master key {master_id} is current: run `bastion keys rotate --master` first"
        )
    for each in (database, *also):
        with each.snapshot() as connection:
            users = master_key_usage(connection).get(master_id, 0)
        if users and each is database:
            raise KeyStateError(
                f"master key {master_id} still wraps {users} "
                f"data key{'s' if users != 1 else ''}: "
                f"run `bastion keys rotate --master` to re-wrap them"
            )
        if users:
            raise KeyStateError(
                f"master key {master_id} still wraps {users} data key{'s' if users != 1 else ''} "
                f"of {each.path}, which would become unreadable: run `bastion keys rotate "
                f"--master` (it re-wraps the data keys of every database in the data "
                f"directory), then retire {master_id}; retire itself never re-wraps keys"
            )
    provider.remove_master_key(master_id)


def add_seal_counts(database: Database, counts: Mapping[str, int]) -> None:
    """Add per-key seal counts (from ``KeyRing.take_seals``) to the persisted totals."""
    if not counts:
        return
    with database.transaction() as connection:
        for key_id, count in counts.items():
            connection.execute(
                "UPDATE bastion_data_keys SET sealed = sealed + ? WHERE id = ?", (count, key_id)
            )
