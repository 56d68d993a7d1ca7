"""The journal table's record format: a batch of ``records.Op`` as one compact byte string.

A group commit appends one journal row per batch (``brokerstate.py``): the batch's ops,
encoded here and sealed as a whole, so a commit costs one seal and one row however many
messages it holds. Each op becomes a tuple of plain values (kind code first) and the batch a
``marshal`` dump of the list of tuples, behind a format byte. ``decode_ops`` trusts nothing:
the blob was authenticated (AEAD) before it gets here, but a malformed one still fails only
with ``StorageError``, never with a crash or a wrong record.
"""

from __future__ import annotations

import marshal
from collections.abc import Callable, Sequence
from typing import Any

from bastion.storage.errors import StorageError
from bastion.storage.records import (
    Op,
    OpKind,
    StoredInbound,
    StoredMessage,
    StoredOutboxEntry,
    StoredSession,
    StoredSubscription,
    StoredWill,
)

__all__ = ["FORMAT", "decode_ops", "encode_ops"]

FORMAT = b"\x01"
"""Version of the encoding; a blob with another first byte is refused."""

_Fields = tuple[object, ...]


def _message(v: StoredMessage) -> _Fields:
    return (v.msg_id, v.topic, v.payload, v.qos, v.retain, v.properties, v.expires_at, v.origin)


def _outbox(v: StoredOutboxEntry) -> _Fields:
    return (
        v.client_id,
        v.msg_id,
        v.shared,
        v.qos,
        v.retain,
        tuple(v.subscription_ids),
        v.attempts,
        v.packet_id,
        v.released,
        v.share_filter,
    )


def _session(v: StoredSession) -> _Fields:
    return (v.client_id, v.expiry_interval, v.username, v.offline_since)


def _subscription(v: StoredSubscription) -> _Fields:
    return (
        v.client_id,
        v.topic_filter,
        v.qos,
        v.no_local,
        v.retain_as_published,
        v.retain_handling,
        v.identifier,
    )


def _inbound(v: StoredInbound) -> _Fields:
    return (v.client_id, v.packet_id)


def _will(v: StoredWill) -> _Fields:
    return (v.client_id, v.topic, v.payload, v.qos, v.retain, v.properties, v.due_at)


def _key(value: object) -> _Fields:
    return value if isinstance(value, tuple) else (value,)


# kind -> (code, record type or None for a key, fields of a value)
_ENCODERS: dict[str, tuple[int, type | None, Callable[[Any], _Fields]]] = {
    "put_message": (0, StoredMessage, _message),
    "put_outbox": (1, StoredOutboxEntry, _outbox),
    "delete_outbox": (2, None, _key),
    "put_session": (3, StoredSession, _session),
    "delete_session": (4, None, _key),
    "put_subscription": (5, StoredSubscription, _subscription),
    "delete_subscription": (6, None, _key),
    "put_inbound": (7, StoredInbound, _inbound),
    "delete_inbound": (8, StoredInbound, _inbound),
    "put_retained": (9, None, _key),
    "delete_retained": (10, None, _key),
    "put_will": (11, StoredWill, _will),
    "delete_will": (12, None, _key),
}


# ------------------------------------------------------------------ shapes and ranges

_Kinds = tuple[type, ...]
_STR: _Kinds = (str,)
_INT: _Kinds = (int,)
_BOOL: _Kinds = (bool,)
_BYTES: _Kinds = (bytes,)
_IDS: _Kinds = (tuple,)
_OPT_STR: _Kinds = (str, type(None))
_OPT_INT: _Kinds = (int, type(None))
_FLOAT: _Kinds = (float, int)
_OPT_FLOAT: _Kinds = (float, int, type(None))


# code -> (kind, record type or None, field checks)
_DECODERS: dict[int, tuple[OpKind, type | None, tuple[_Kinds, ...]]] = {
    0: (
        "put_message",
        StoredMessage,
        (_INT, _STR, _BYTES, _INT, _BOOL, _BYTES, _OPT_FLOAT, _OPT_STR),
    ),
    1: (
        "put_outbox",
        StoredOutboxEntry,
        (_STR, _INT, _BOOL, _INT, _BOOL, _IDS, _INT, _OPT_INT, _BOOL, _OPT_STR),
    ),
    2: ("delete_outbox", None, (_STR, _INT, _BOOL)),
    3: ("put_session", StoredSession, (_STR, _INT, _OPT_STR, _OPT_FLOAT)),
    4: ("delete_session", None, (_STR,)),
    5: (
        "put_subscription",
        StoredSubscription,
        (_STR, _STR, _INT, _BOOL, _BOOL, _INT, _OPT_INT),
    ),
    6: ("delete_subscription", None, (_STR, _STR)),
    7: ("put_inbound", StoredInbound, (_STR, _INT)),
    8: ("delete_inbound", StoredInbound, (_STR, _INT)),
    9: ("put_retained", None, (_STR, _INT)),
    10: ("delete_retained", None, (_STR,)),
    11: ("put_will", StoredWill, (_STR, _STR, _BYTES, _INT, _BOOL, _BYTES, _FLOAT)),
    12: ("delete_will", None, (_STR,)),
}


def _qos(value: object) -> bool:
    return value in (0, 1, 2)


def _packet_id(value: object) -> bool:
    return type(value) is int and 1 <= value <= 65535


# code -> whether the fields are in range (the tables' CHECK constraints, checked before a
# batch is appended: a value the tables would refuse must never reach the journal)
_IN_RANGE: dict[int, Callable[[_Fields], bool]] = {
    0: lambda f: f[0] > 0 and _qos(f[3]),  # type: ignore[operator]
    1: lambda f: (
        _qos(f[3])
        and f[6] >= 0  # type: ignore[operator]
        and (f[7] is None or _packet_id(f[7]))
        and all(type(i) is int for i in f[5])  # type: ignore[attr-defined]
    ),
    3: lambda f: f[1] >= 0,  # type: ignore[operator]
    5: lambda f: _qos(f[2]) and _qos(f[5]),
    7: lambda f: _packet_id(f[1]),
    8: lambda f: _packet_id(f[1]),
    11: lambda f: _qos(f[3]),
}


def _message_ok(f: _Fields) -> bool:
    """The hot kinds' checks written out (what ``_validate`` checks, only faster)."""
    msg_id, topic, payload, qos, retain, props, expires, origin = f
    return (
        type(msg_id) is int
        and msg_id > 0
        and type(topic) is str
        and type(payload) is bytes
        and type(qos) is int
        and 0 <= qos <= 2
        and type(retain) is bool
        and type(props) is bytes
        and (expires is None or type(expires) is float or type(expires) is int)
        and (origin is None or type(origin) is str)
    )


def _outbox_ok(f: _Fields) -> bool:
    client, msg_id, shared, qos, retain, ids, attempts, packet_id, released, share = f
    return (
        type(client) is str
        and type(msg_id) is int
        and type(shared) is bool
        and type(qos) is int
        and 0 <= qos <= 2
        and type(retain) is bool
        and type(ids) is tuple
        and (not ids or all(type(i) is int for i in ids))
        and type(attempts) is int
        and attempts >= 0
        and (packet_id is None or (type(packet_id) is int and 1 <= packet_id <= 65535))
        and type(released) is bool
        and (share is None or type(share) is str)
    )


def _outbox_key_ok(f: _Fields) -> bool:
    return len(f) == 3 and type(f[0]) is str and type(f[1]) is int and type(f[2]) is bool


_FAST: dict[int, Callable[[_Fields], bool]] = {0: _message_ok, 1: _outbox_ok, 2: _outbox_key_ok}


def _validate(code: int, fields: _Fields) -> str | None:
    """What is wrong with an op's fields (None: nothing)."""
    kind, _, checks = _DECODERS[code]
    if len(fields) != len(checks):
        return f"{kind} with {len(fields)} fields"
    for value, kinds in zip(fields, checks, strict=True):
        if type(value) not in kinds:  # a bool is no int here: marshal keeps them apart
            return f"{kind} with a bad field {value!r:.60}"
    in_range = _IN_RANGE.get(code)
    if in_range is not None and not in_range(fields):
        return f"{kind} with a value out of range {fields!r:.80}"
    return None


# ------------------------------------------------------------------ encoding, decoding


def encode_ops(ops: Sequence[Op]) -> bytes:
    """``ops`` as one byte string; ``StorageError`` for an unknown kind or a wrong value."""
    encoders = _ENCODERS
    rows: list[_Fields] = []
    for kind, value in ops:
        entry = encoders.get(kind)
        if entry is None:
            raise StorageError(f"unknown op kind {kind!r}")
        code, expected, fields_of = entry
        if expected is not None and type(value) is not expected:
            raise StorageError(f"op {kind}: expected {expected.__name__}, got {value!r:.80}")
        fields = fields_of(value)
        fast = _FAST.get(code)
        if fast is None or not fast(fields):
            problem = _validate(code, fields)
            if problem is not None:
                raise StorageError(f"op {problem}")
        rows.append((code, *fields))
    return FORMAT + marshal.dumps(rows)


def decode_ops(blob: bytes) -> list[Op]:
    """The ops ``encode_ops`` made of a batch; ``StorageError`` if ``blob`` is not one."""
    if blob[:1] != FORMAT:
        raise StorageError(f"journal record: unknown format {blob[:1]!r}")
    try:
        rows = marshal.loads(blob[1:])
    except (EOFError, ValueError, TypeError) as error:
        raise StorageError(f"journal record: unreadable ({error})") from None
    if not isinstance(rows, list):
        raise StorageError("journal record: not a list of ops")
    ops: list[Op] = []
    for row in rows:
        if not isinstance(row, tuple) or not row:
            raise StorageError(f"journal record: bad op {row!r:.60}")
        entry = _DECODERS.get(row[0]) if type(row[0]) is int else None
        if entry is None:
            raise StorageError(f"journal record: unknown op code {row[0]!r:.20}")
        kind, record_type, _ = entry
        fields = row[1:]
        problem = _validate(row[0], fields)
        if problem is not None:
            raise StorageError(f"journal record: {problem}")
        if record_type is not None:
            ops.append((kind, record_type(*fields)))
        else:
            ops.append((kind, fields[0] if len(fields) == 1 else fields))
    return ops
