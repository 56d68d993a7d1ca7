"""The core's write-ahead journal: durable state changes as ops, and what waits for them.

The core records every change of durable state (sessions with an expiry interval, their
subscriptions and outboxes, inbound QoS 2 ids, retained messages, delayed wills) as
``storage.records`` ops here, and hands ``after_commit`` the actions that promise them to a
client (PUBACK, PUBREC, PUBCOMP, an outbound QoS 2 PUBLISH or PUBREL). The runtime's group
committer takes the ops and actions in batches (``take``), writes the ops in one transaction
off the event loop and then runs the actions. ``MemoryJournal`` (no persistence) runs every
action at once and keeps nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bastion.broker.messages import Delivery, Message
from bastion.mqtt.packets import NO_PROPERTIES, PacketType, Subscription, Will
from bastion.mqtt.properties import WILL, encode_properties
from bastion.storage.records import (
    Op,
    StoredInbound,
    StoredMessage,
    StoredOutboxEntry,
    StoredSession,
    StoredSubscription,
    StoredWill,
)

if TYPE_CHECKING:
    from bastion.broker.sessions import SessionState

__all__ = [
    "DURABLE",
    "Action",
    "Journal",
    "MemoryJournal",
    "WriteAheadJournal",
    "arm",
    "durable",
    "subscription_record",
]

Action = Callable[[int], None]
"""Run once the ops recorded before it are durable (argument 0) or could not be written (the
MQTT reason code to answer with: 0x97 when the store is full, 0x80 otherwise)."""

DURABLE = 0


class Journal:
    """What the core writes through; this base class is the memory-only journal."""

    enabled = False

    def __init__(self, wall_offset: float = 0.0) -> None:
        self.wall_offset = wall_offset  # wall clock = monotonic ``now`` + this
        # Set by the runtime while the store is (nearly) full: new durable work (a QoS 1/2
        # message for a durable session or the retained store) is refused up front (0x97),
        # so the room left serves acknowledgements, which free space.
        self.full = False

    def wall(self, now: float) -> float:
        return now + self.wall_offset

    def changes(self) -> int:
        """A counter that grows with every op (compare before and after an operation)."""
        return 0

    def add(self, op: Op) -> None:
        """Record one change."""

    def after_commit(self, action: Action) -> None:
        """Run ``action`` once everything recorded so far is durable."""
        action(DURABLE)

    # -- helpers for the core: each turns one change into its op -----------------------

    def message(self, message: Message) -> None:
        """Make sure ``message`` itself is stored before something refers to it."""

    def session(self, client_id: str, expiry: int, username: str | None, off: float | None) -> None:
        self.add(("put_session", StoredSession(client_id, expiry, username, off)))

    def session_gone(self, client_id: str) -> None:
        self.add(("delete_session", client_id))

    def subscription(self, record: StoredSubscription) -> None:
        self.add(("put_subscription", record))

    def unsubscribed(self, client_id: str, topic_filter: str) -> None:
        self.add(("delete_subscription", (client_id, topic_filter)))

    def copy(
        self,
        client_id: str,
        delivery: Delivery,
        *,
        attempts: int = 0,
        packet_id: int | None = None,
        released: bool = False,
        created: bool = False,
    ) -> None:
        """A copy of a message queued for, or in flight to, a durable session (``created``:
        the copy is new, so no stored row can exist for it before this batch)."""
        self.message(delivery.message)
        self.add(("put_outbox", _entry(client_id, delivery, attempts, packet_id, released)))

    def copy_done(self, client_id: str, delivery: Delivery) -> None:
        self.add(("delete_outbox", _copy_key(client_id, delivery)))

    def inbound(self, client_id: str, packet_id: int, *, done: bool = False) -> None:
        record = StoredInbound(client_id, packet_id)
        self.add(("delete_inbound", record) if done else ("put_inbound", record))

    def retained(self, message: Message) -> None:
        self.message(message)
        self.add(("put_retained", (message.topic, message.ident)))

    def retained_gone(self, topic: str) -> None:
        self.add(("delete_retained", topic))

    def will(self, client_id: str, will: Will, due: float) -> None:
        """A will waiting for its delay, due at monotonic ``due``."""
        props = will.properties
        block = b"" if props is NO_PROPERTIES else encode_properties(props, WILL)
        record = StoredWill(
            client_id, will.topic, will.payload, will.qos, will.retain, block, self.wall(due)
        )
        self.add(("put_will", record))

    def will_gone(self, client_id: str) -> None:
        self.add(("delete_will", client_id))


class MemoryJournal(Journal):
    """No persistence: nothing is recorded and every action runs at once."""

    __slots__ = ()


class WriteAheadJournal(Journal):
    """Ops and actions waiting for the next group commit (single-threaded: the event loop)."""

    enabled = True

    def __init__(self, wall_offset: float = 0.0, *, wake: Callable[[], None] | None = None) -> None:
        super().__init__(wall_offset)
        self.ops: list[Op] = []
        self.actions: list[Action] = []
        self._count = 0
        self.wake = wake  # called when the first op or action of a batch arrives
        # Within the current batch: where each message's put_message op is, how many new
        # references (copies created, retained) the batch makes to it, the ops of each copy
        # created in this batch, and the copies any op touched. A copy created and finished
        # in one batch (an online durable subscriber acknowledged it before the commit)
        # cancels out: neither its rows nor, if nothing else refers to it, its message are
        # written.
        self._message_at: dict[int, int] = {}
        self._refs: dict[int, int] = {}
        self._fresh: dict[_CopyKey, list[int]] = {}
        self._touched: set[_CopyKey] = set()
        # A delete the next put of the same copy makes redundant (the put replaces the row):
        # a queued copy that starts its flight in the same batch is written once, not twice.
        self._deleted_at: dict[_CopyKey, int] = {}

    def changes(self) -> int:
        return self._count

    def add(self, op: Op) -> None:
        if not self.ops and not self.actions and self.wake is not None:
            self.wake()
        self.ops.append(op)
        self._count += 1

    def after_commit(self, action: Action) -> None:
        if not self.ops and not self.actions and self.wake is not None:
            self.wake()
        self.actions.append(action)

    def take(self) -> tuple[list[Op], list[Action]]:
        """The batch to commit now (a new one starts empty)."""
        ops, actions = self.ops, self.actions
        self.ops, self.actions = [], []
        # Each batch stores the messages its new copies refer to (a repeat is ignored by the
        # store): the store may purge a message between two batches once nothing refers to
        # it, so "written before" cannot be trusted across batches. A change of an existing
        # copy needs none: its stored row keeps the message.
        self._message_at.clear()
        self._refs.clear()
        self._fresh.clear()
        self._touched.clear()
        self._deleted_at.clear()
        return [op for op in ops if op is not _CANCELLED], actions

    def pending(self) -> bool:
        return bool(self.ops or self.actions)

    def message(self, message: Message) -> None:
        ident = message.ident
        self._refs[ident] = self._refs.get(ident, 0) + 1
        if ident in self._message_at:
            return
        self.add(
            (
                "put_message",
                StoredMessage(
                    ident,
                    message.topic,
                    message.payload,
                    message.qos,
                    message.retain,
                    _property_block(message),
                    None if message.expires_at is None else self.wall(message.expires_at),
                    message.origin,
                ),
            )
        )
        self._message_at[ident] = len(self.ops) - 1

    def copy(
        self,
        client_id: str,
        delivery: Delivery,
        *,
        attempts: int = 0,
        packet_id: int | None = None,
        released: bool = False,
        created: bool = False,
    ) -> None:
        # The hot path of durable QoS 1/2 (several calls per message): written out flat.
        message = delivery.message
        group = delivery.group
        key = (client_id, message.ident, group is not None)
        ops = self.ops
        deleted = self._deleted_at.pop(key, None) if self._deleted_at else None
        if deleted is not None:  # the row lives on (a queued copy starts its flight)
            ops[deleted] = _CANCELLED
        elif created:  # a new reference: its message must be in the same batch
            self.message(message)
        # (A change of an existing copy needs no message: the copy's stored row keeps it.)
        if not ops and not self.actions and self.wake is not None:
            self.wake()
        ops.append(("put_outbox", _entry(client_id, delivery, attempts, packet_id, released)))
        self._count += 1
        at = len(ops) - 1
        fresh = self._fresh.get(key)
        if fresh is not None:
            fresh.append(at)
        elif created and deleted is None and key not in self._touched:
            self._fresh[key] = [at]
        self._touched.add(key)

    def copy_done(self, client_id: str, delivery: Delivery) -> None:
        message = delivery.message
        ident = message.ident
        key = (client_id, ident, delivery.group is not None)
        fresh = self._fresh.pop(key, None)
        ops = self.ops
        if fresh is None:
            if not ops and not self.actions and self.wake is not None:
                self.wake()
            ops.append(("delete_outbox", key))
            self._count += 1
            self._touched.add(key)
            self._deleted_at[key] = len(ops) - 1
            return
        for at in fresh:  # never stored: nothing to delete either
            ops[at] = _CANCELLED
        refs = self._refs.get(ident, 0) - 1  # its creation was the one reference it made
        self._refs[ident] = refs
        message_at = self._message_at.get(ident)
        if refs <= 0 and message_at is not None:
            ops[message_at] = _CANCELLED
            del self._message_at[ident]


_CopyKey = tuple[str, int, bool]
_CANCELLED: Op = ("put_message", None)  # a placeholder ``take`` drops (compared by identity)


def _copy_key(client_id: str, delivery: Delivery) -> _CopyKey:
    return (client_id, delivery.message.ident, delivery.group is not None)


def _entry(
    client_id: str, delivery: Delivery, attempts: int, packet_id: int | None, released: bool
) -> StoredOutboxEntry:
    message = delivery.message
    group = delivery.group
    return StoredOutboxEntry(
        client_id,
        message.ident,
        group is not None,
        delivery.qos,
        delivery.retain,
        delivery.subscription_ids,
        attempts,
        packet_id,
        released,
        None if group is None else f"$share/{group.name}/{group.topic_filter}",
    )


def _property_block(message: Message) -> bytes:
    """The message's MQTT 5 properties as the codec writes them (b"" for none)."""
    props = message.properties
    if props is NO_PROPERTIES:
        return b""
    return encode_properties(props, PacketType.PUBLISH)


def arm(journal: Journal, state: SessionState) -> None:
    """After a CONNECT fixed the session's expiry: journal the session (or its end) and
    make its outbox journal every change while it is durable (expiry > 0)."""
    if not journal.enabled:
        return
    outbox = state.outbox
    if state.expiry_interval > 0:
        journal.session(state.client_id, state.expiry_interval, state.identity.username, None)
        if outbox.journal is None:
            outbox.journal = journal
            outbox.owner = state.client_id
    elif outbox.journal is not None:
        journal.session_gone(state.client_id)
        outbox.journal = None


def durable(state: SessionState) -> Journal | None:
    """The journal of a durable session (None: not durable, or no persistence)."""
    return state.outbox.journal


def subscription_record(
    client_id: str, sub: Subscription, identifier: int | None
) -> StoredSubscription:
    return StoredSubscription(
        client_id,
        sub.topic_filter,
        sub.qos,
        sub.no_local,
        sub.retain_as_published,
        sub.retain_handling,
        identifier,
    )
