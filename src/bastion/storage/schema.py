"""The broker's tables (schema version 2): sessions, subscriptions, messages, outboxes, QoS 2
ids, retained topics and wills, holding the records of ``records.py``; and (version 3) the
write-ahead journal whose rows a checkpoint folds into them.

``database.MIGRATIONS`` lists ``BROKER_SCHEMA`` and ``JOURNAL_SCHEMA``; ``brokerstate.py``
reads and writes the tables. Sealed (``registry.py``): ``messages.payload``/``properties``,
``wills.payload``/``properties``, ``sessions.username`` and ``journal.ops`` (everything in a
batch, topics included). Topics, client ids, filters and delivery metadata stay plaintext:
they are routing data, and nothing derived from a payload or property block is indexed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.storage.registry import EncryptedTable, registration

if TYPE_CHECKING:
    from bastion.storage.database import MigrationStep

__all__ = [
    "BROKER_SCHEMA",
    "BROKER_TABLES",
    "JOURNAL",
    "JOURNAL_SCHEMA",
    "JOURNAL_SEQ",
    "MESSAGES",
    "MSG_ID_HIGH",
    "SESSIONS",
    "WILLS",
]

MESSAGES = EncryptedTable("messages", ("msg_id",), ("payload", "properties"))
WILLS = EncryptedTable("wills", ("client_id",), ("payload", "properties"))
SESSIONS = EncryptedTable("sessions", ("client_id",), ("username",))
"""``username`` is sealed as a tagged value (``brokerstate.py``), so even None is sealed and
a session cannot be made anonymous by editing the file."""

JOURNAL = EncryptedTable("journal", ("seq",), ("ops",))
"""One row per group commit: the batch's ops (``oplog.py``), sealed as a whole."""

MSG_ID_HIGH = "msg_id_high"
"""``bastion_meta`` entry: the highest msg_id ever stored (ids are never reused)."""

BROKER_TABLES = (
    "sessions",
    "subscriptions",
    "messages",
    "outbox",
    "inbound",
    "retained",
    "wills",
    "purge_queue",
)
"""Every table of this schema (what ``stats`` counts)."""

# A queued message is referenced by its outbox copies and a retained topic. Whenever one of
# those references goes (and when a message is stored), a trigger queues the msg_id in
# purge_queue; ``brokerstate.purge`` checks only those ids instead of scanning messages.
# (No INSERT OR IGNORE: the conflict policy of an upsert that fires a trigger overrides the
# trigger's own, so the triggers avoid conflicts instead.)
_QUEUE = (
    "INSERT INTO purge_queue (msg_id) SELECT {row}.msg_id "
    "WHERE NOT EXISTS (SELECT 1 FROM purge_queue WHERE msg_id = {row}.msg_id)"
)
_PURGE_TRIGGERS = (
    f"""CREATE TRIGGER bastion_purge_on_message AFTER INSERT ON messages
    BEGIN {_QUEUE.format(row="NEW")}; END""",
    f"""CREATE TRIGGER bastion_purge_on_outbox AFTER DELETE ON outbox
    BEGIN {_QUEUE.format(row="OLD")}; END""",
    f"""CREATE TRIGGER bastion_purge_on_retained_delete AFTER DELETE ON retained
    BEGIN {_QUEUE.format(row="OLD")}; END""",
    f"""CREATE TRIGGER bastion_purge_on_retained_update AFTER UPDATE OF msg_id ON retained
    WHEN OLD.msg_id IS NOT NEW.msg_id BEGIN {_QUEUE.format(row="OLD")}; END""",
)

BROKER_SCHEMA: tuple[MigrationStep, ...] = (
    """CREATE TABLE sessions (
        client_id TEXT PRIMARY KEY NOT NULL,
        expiry_interval INTEGER NOT NULL CHECK (expiry_interval >= 0),
        offline_since REAL,
        key_id TEXT NOT NULL,
        username BLOB NOT NULL
    ) WITHOUT ROWID""",
    registration(SESSIONS),
    """CREATE TABLE subscriptions (
        client_id TEXT NOT NULL,
        topic_filter TEXT NOT NULL,
        qos INTEGER NOT NULL CHECK (qos BETWEEN 0 AND 2),
        no_local INTEGER NOT NULL,
        retain_as_published INTEGER NOT NULL,
        retain_handling INTEGER NOT NULL CHECK (retain_handling BETWEEN 0 AND 2),
        identifier INTEGER,
        PRIMARY KEY (client_id, topic_filter)
    ) WITHOUT ROWID""",
    """CREATE TABLE messages (
        msg_id INTEGER PRIMARY KEY CHECK (msg_id > 0),
        topic TEXT NOT NULL,
        qos INTEGER NOT NULL CHECK (qos BETWEEN 0 AND 2),
        retain INTEGER NOT NULL,
        expires_at REAL,
        origin TEXT,
        key_id TEXT NOT NULL,
        payload BLOB NOT NULL,
        properties BLOB NOT NULL
    )""",
    registration(MESSAGES),
    "CREATE INDEX messages_expiry ON messages (expires_at) WHERE expires_at IS NOT NULL",
    """CREATE TABLE outbox (
        client_id TEXT NOT NULL,
        msg_id INTEGER NOT NULL,
        shared INTEGER NOT NULL,
        qos INTEGER NOT NULL CHECK (qos BETWEEN 0 AND 2),
        retain INTEGER NOT NULL,
        subscription_ids TEXT,
        attempts INTEGER NOT NULL CHECK (attempts >= 0),
        packet_id INTEGER CHECK (packet_id BETWEEN 1 AND 65535),
        released INTEGER NOT NULL,
        share_filter TEXT,
        PRIMARY KEY (client_id, msg_id, shared)
    ) WITHOUT ROWID""",
    "CREATE INDEX outbox_message ON outbox (msg_id)",
    """CREATE TABLE inbound (
        client_id TEXT NOT NULL,
        packet_id INTEGER NOT NULL CHECK (packet_id BETWEEN 1 AND 65535),
        PRIMARY KEY (client_id, packet_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE retained (
        topic TEXT PRIMARY KEY NOT NULL,
        msg_id INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX retained_message ON retained (msg_id)",
    """CREATE TABLE wills (
        client_id TEXT PRIMARY KEY NOT NULL,
        topic TEXT NOT NULL,
        qos INTEGER NOT NULL CHECK (qos BETWEEN 0 AND 2),
        retain INTEGER NOT NULL,
        due_at REAL NOT NULL,
        key_id TEXT NOT NULL,
        payload BLOB NOT NULL,
        properties BLOB NOT NULL
    )""",
    registration(WILLS),
    "CREATE TABLE purge_queue (msg_id INTEGER PRIMARY KEY NOT NULL)",
    *_PURGE_TRIGGERS,
)
"""Migration 2: the broker's tables, their sealed columns registered."""

JOURNAL_SEQ = "journal_seq"
"""``bastion_meta`` entry: the last journal seq a checkpoint removed (seqs are never reused)."""

JOURNAL_SCHEMA: tuple[MigrationStep, ...] = (
    """CREATE TABLE journal (
        seq INTEGER PRIMARY KEY NOT NULL,
        key_id TEXT NOT NULL,
        ops BLOB NOT NULL
    )""",
    registration(JOURNAL),
)
"""Migration 3: the write-ahead journal. A group commit appends one sealed row; a checkpoint
folds the rows into the tables above (``opfold.py``) and deletes them."""
