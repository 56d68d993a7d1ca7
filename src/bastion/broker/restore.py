"""Rebuild the broker from what the store loaded at start (``storage.records.StoredState``).

Durable sessions come back offline with their remaining expiry, subscriptions, queued and
in-flight copies (packet ids, transmissions and the QoS 2 stage kept, so resends carry DUP
and exactly-once holds), inbound QoS 2 ids, retained messages and delayed wills. Wall-clock
times from the store become monotonic deadlines here. ``core.Broker.restore`` calls it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bastion.broker.messages import Delivery, Message
from bastion.broker.sessions import NEVER_EXPIRES, Inflight, SessionState
from bastion.broker.subscriptions import SharedGroup, SubscriptionEntry
from bastion.mqtt.packets import NO_PROPERTIES, PacketType, Properties, Subscription, Will
from bastion.mqtt.properties import WILL, decode_properties
from bastion.mqtt.topics import parse_shared
from bastion.security.policy import ClientIdentity
from bastion.storage.records import StoredMessage, StoredState

if TYPE_CHECKING:
    from bastion.broker.core import Broker

__all__ = ["RestoreReport", "restore"]


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What came back (for the start-up log line)."""

    sessions: int
    expired_sessions: int
    subscriptions: int
    queued: int
    inflight: int
    retained: int
    wills: int
    skipped: int  # records that failed authentication, or copies over today's bounds


def _properties(block: bytes, kind: int) -> Properties:
    if not block:
        return NO_PROPERTIES
    props, _ = decode_properties(block, 0, kind)
    return props


def restore(broker: Broker, stored: StoredState, now: float) -> RestoreReport:
    """Load ``stored`` into an empty ``broker`` at monotonic ``now``."""
    journal = broker.journal
    wall_now = journal.wall(now)
    settings = broker.settings
    router = broker.router
    router.next_ident = itertools.count(stored.next_msg_id).__next__

    def message(record: StoredMessage) -> Message:
        expires = None if record.expires_at is None else now + (record.expires_at - wall_now)
        return Message(
            record.topic,
            record.payload,
            record.qos,
            record.retain,
            _properties(record.properties, PacketType.PUBLISH),
            expires,
            record.origin,
            record.msg_id,
        )

    messages = {msg_id: message(record) for msg_id, record in stored.messages.items()}
    states: dict[str, SessionState] = {}
    expired = 0
    for record in stored.sessions:
        offline_since = wall_now if record.offline_since is None else record.offline_since
        elapsed = max(0.0, wall_now - offline_since)
        if record.expiry_interval < NEVER_EXPIRES and elapsed >= record.expiry_interval:
            journal.session_gone(record.client_id)
            expired += 1
            continue
        identity = ClientIdentity(record.client_id, record.username, "restored")
        state = SessionState(
            record.client_id,
            identity,
            settings.max_queued_messages,
            max_queued_bytes=settings.max_queued_bytes,
            max_inflight_bytes=settings.max_inflight_bytes,
        )
        state.expiry_interval = record.expiry_interval
        broker.sessions.add(state)
        broker.sessions.go_offline(state, now - elapsed)
        if record.offline_since is None:  # it was connected when the broker stopped
            journal.session(record.client_id, record.expiry_interval, record.username, wall_now)
        states[record.client_id] = state

    subscriptions = 0
    for sub in stored.subscriptions:
        if sub.client_id not in states:
            continue
        options = Subscription(
            sub.topic_filter, sub.qos, sub.no_local, sub.retain_as_published, sub.retain_handling
        )
        broker.subscriptions.add(SubscriptionEntry(sub.client_id, options, sub.identifier))
        subscriptions += 1

    queued = inflight = skipped = 0
    for entry in stored.outbox:
        owner = states.get(entry.client_id)
        copy_of = messages.get(entry.msg_id)
        if owner is None or copy_of is None:
            continue
        group = _group(broker, entry.share_filter) if entry.shared else None
        delivery = Delivery(
            copy_of, entry.qos, entry.retain, entry.subscription_ids, group, entry.attempts
        )
        outbox = owner.outbox
        if entry.packet_id is None:
            if outbox.enqueue(delivery):
                queued += 1
            else:
                skipped += 1  # over today's queue bounds
            continue
        # The transmission the crash interrupted is not the client's failure: it does not
        # count against max_delivery_attempts (the resend on reconnect counts it again).
        outbox.inflight[entry.packet_id] = Inflight(
            entry.packet_id, delivery, entry.released, max(entry.attempts - 1, 0)
        )
        outbox.inflight_bytes += copy_of.size
        inflight += 1

    for inbound in stored.inbound:
        receiver = states.get(inbound.client_id)
        if receiver is not None:
            broker.inbound.releases.received(receiver, inbound.packet_id, now)

    retained = 0
    for topic, msg_id in stored.retained.items():
        kept = messages.get(msg_id)
        if kept is not None and not kept.is_expired(now):
            broker.retained.set(topic, kept)
            retained += 1

    wills = 0
    for pending in stored.wills:
        if pending.client_id not in states:
            continue
        will = Will(
            pending.topic,
            pending.payload,
            pending.qos,
            pending.retain,
            _properties(pending.properties, WILL),
        )
        broker.wills.schedule(pending.client_id, will, now + (pending.due_at - wall_now))
        wills += 1

    for state in states.values():  # from now on every change of these sessions is journaled
        if journal.enabled:
            state.outbox.journal = journal
            state.outbox.owner = state.client_id
    broker.stats.retained_count = len(broker.retained)
    broker.refresh_counts()
    return RestoreReport(
        len(states),
        expired,
        subscriptions,
        queued,
        inflight,
        retained,
        wills,
        stored.skipped + skipped,
    )


def _group(broker: Broker, share_filter: str | None) -> SharedGroup:
    """The shared group a restored copy came through: the live one (so the copy can move to
    another member, as before the restart), or a detached stand-in when the subscription is
    gone — either way the copy keeps its identity as a shared copy in the store."""
    full = share_filter or "$share/restored/#"
    live = broker.subscriptions.group(full)
    if live is not None:
        return live
    name, topic_filter = parse_shared(full)
    return SharedGroup(name or "restored", topic_filter)
