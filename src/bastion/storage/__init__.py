"""Persistence behind one interface: SQLite in WAL mode, encrypted at rest with rotating keys.

``base.Store`` is the seam the broker will use; ``sqlite.open_store`` opens one. Records are
sealed with data keys (``crypto``, ``datakeys``) wrapped by a master key (``keys``).
"""

from bastion.storage.base import Store, StoreHealth, StoreOpener, StoreOptions
from bastion.storage.crypto import KeyRing, pack_key
from bastion.storage.database import MIGRATIONS, Database, Migration, open_database
from bastion.storage.errors import (
    DatabaseUnusableError,
    KeyConfigError,
    KeyRetiredError,
    KeyStateError,
    MasterKeyMismatchError,
    RecordTamperedError,
    StorageBusyError,
    StorageError,
    StorageFullError,
    StorageIOError,
    StorageReadOnlyError,
    UnknownKeyError,
)
from bastion.storage.keys import (
    DEFAULT_KEY_ENV,
    EnvKeyProvider,
    FileKeyProvider,
    KeyProvider,
    RotatableKeyProvider,
    resolve_provider,
)
from bastion.storage.layout import database_path, default_data_dir
from bastion.storage.registry import EncryptedTable, registration
from bastion.storage.sqlite import SqliteStore, open_store, open_store_from_settings

__all__ = [
    "DEFAULT_KEY_ENV",
    "MIGRATIONS",
    "Database",
    "DatabaseUnusableError",
    "EncryptedTable",
    "EnvKeyProvider",
    "FileKeyProvider",
    "KeyConfigError",
    "KeyProvider",
    "KeyRetiredError",
    "KeyRing",
    "KeyStateError",
    "MasterKeyMismatchError",
    "Migration",
    "RecordTamperedError",
    "RotatableKeyProvider",
    "SqliteStore",
    "StorageBusyError",
    "StorageError",
    "StorageFullError",
    "StorageIOError",
    "StorageReadOnlyError",
    "Store",
    "StoreHealth",
    "StoreOpener",
    "StoreOptions",
    "UnknownKeyError",
    "database_path",
    "default_data_dir",
    "open_database",
    "open_store",
    "open_store_from_settings",
    "pack_key",
    "registration",
    "resolve_provider",
]
