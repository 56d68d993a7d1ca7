"""Folding many journal batches into the few row changes they add up to.

Between two checkpoints the store keeps the ops of every appended batch folded here: per row
only the last change counts (a put replaces the row, a delete removes it), a
``delete_session`` sweeps what came before it for that client, and a message is written only
if a row still refers to it at the end. An online durable subscriber's copies are typically
created, sent and acknowledged within a second, so most of a busy second's ops cancel out and
the checkpoint writes a small remainder to the tables. ``net()`` gives that remainder as ops
which, applied in order to the tables as they were before the first folded batch, leave them
as applying every batch one by one would have.
"""

from __future__ import annotations

from collections.abc import Iterable

from bastion.storage.errors import StorageError
from bastion.storage.records import Op, StoredMessage

__all__ = ["OpFold"]

_RowKey = tuple[object, ...]

# kind -> (table, by_client): the row an op changes is (table, *key)
_TABLE_OF: dict[str, tuple[str, bool]] = {
    "put_session": ("sessions", True),
    "put_subscription": ("subscriptions", True),
    "delete_subscription": ("subscriptions", True),
    "put_outbox": ("outbox", True),
    "delete_outbox": ("outbox", True),
    "put_inbound": ("inbound", True),
    "delete_inbound": ("inbound", True),
    "put_retained": ("retained", False),
    "delete_retained": ("retained", False),
    "put_will": ("wills", True),
    "delete_will": ("wills", True),
}


def _row_key(kind: str, value: object) -> _RowKey:
    """The row ``(kind, value)`` changes: its table, then the key columns."""
    if kind == "put_outbox":
        v = value
        return ("outbox", v.client_id, v.msg_id, v.shared)  # type: ignore[attr-defined]
    if kind == "delete_outbox":
        return ("outbox", *value)  # type: ignore[misc]
    table = _TABLE_OF[kind][0]
    if kind in ("put_session", "put_will"):
        return (table, value.client_id)  # type: ignore[attr-defined]
    if kind == "put_subscription":
        return (table, value.client_id, value.topic_filter)  # type: ignore[attr-defined]
    if kind in ("put_inbound", "delete_inbound"):
        return (table, value.client_id, value.packet_id)  # type: ignore[attr-defined]
    if kind == "put_retained":
        return (table, value[0])  # type: ignore[index]
    if isinstance(value, tuple):  # delete_subscription
        return (table, *value)
    return (table, value)  # delete_retained, delete_will: one key value


class OpFold:
    """The net effect of the ops ``add``-ed since the last ``clear`` (single-threaded)."""

    def __init__(self) -> None:
        self._sweeps: dict[str, None] = {}  # client ids of delete_session ops, in order
        self._rows: dict[_RowKey, Op] = {}  # the last op on each row
        self._messages: dict[int, StoredMessage] = {}  # every put_message, by msg_id
        self.ops = 0  # ops added (what the fold holds back from the tables)

    def __bool__(self) -> bool:
        return bool(self._rows or self._sweeps or self._messages)

    def add(self, ops: Iterable[Op]) -> None:
        """Fold ``ops`` (one batch, in order) in after everything added before."""
        rows = self._rows
        messages = self._messages
        count = 0
        for op in ops:
            count += 1
            kind, value = op
            if kind == "put_message":
                if not isinstance(value, StoredMessage):
                    raise StorageError(f"op put_message: expected a message, got {value!r:.80}")
                messages.setdefault(value.msg_id, value)
            elif kind == "delete_session":
                if not isinstance(value, str):
                    raise StorageError(f"op delete_session: expected a str, got {value!r:.80}")
                self._sweep(value)
            elif kind in _TABLE_OF:
                rows[_row_key(kind, value)] = op  # rows commute: their order does not matter
            else:
                raise StorageError(f"unknown op kind {kind!r}")
        self.ops += count

    def _sweep(self, client_id: str) -> None:
        """A delete_session: every earlier change of the client's rows is moot."""
        self._sweeps.pop(client_id, None)
        self._sweeps[client_id] = None
        moot = [
            key
            for key, (kind, _) in self._rows.items()
            if _TABLE_OF[kind][1] and key[1] == client_id
        ]
        for key in moot:
            del self._rows[key]

    def net(self) -> list[Op]:
        """The ops that have the effect of everything folded (sweeps, messages, rows)."""
        referenced: set[int] = set()
        for kind, value in self._rows.values():
            if kind == "put_outbox":
                referenced.add(value.msg_id)  # type: ignore[attr-defined]
            elif kind == "put_retained":
                referenced.add(value[1])  # type: ignore[index]
        ops: list[Op] = [("delete_session", client_id) for client_id in self._sweeps]
        ops.extend(
            ("put_message", message)
            for msg_id, message in self._messages.items()
            if msg_id in referenced
        )
        ops.extend(self._rows.values())
        return ops

    def highest_message(self) -> int:
        """The highest msg_id folded (0 for none), kept or not."""
        return max(self._messages, default=0)

    def clear(self) -> None:
        self._sweeps.clear()
        self._rows.clear()
        self._messages.clear()
        self.ops = 0
