"""Routing: from one published message to the outboxes of the sessions that receive it.

``Router`` owns the retained store, matches the subscription trie once per message, merges
overlapping subscriptions per client, picks shared-group members, and runs each session's
outbound QoS 1/2 window (send, queue, acknowledge, resend on resume) within its bounds:
window and bytes in flight, queue length and bytes, and ``max_delivery_attempts``
transmissions of one flow (so a message that makes its receiver drop the connection is not
resent forever). Bounds that are hit are counted and reported through ``SecurityLog``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import structlog

from bastion.broker.backpressure import Backpressure, high_water, low_water
from bastion.broker.journal import Journal, MemoryJournal, durable
from bastion.broker.messages import Delivery, Message, outgoing_publish, publish_packet
from bastion.broker.retained import RetainedStore
from bastion.broker.securitylog import SecurityLog
from bastion.broker.sessions import Inflight, Outbox, Session, SessionRegistry, SessionState
from bastion.broker.stats import BrokerStats, Defence
from bastion.broker.subscriptions import (
    RouteTarget,
    SharedGroup,
    SubscriptionEntry,
    SubscriptionTrie,
)
from bastion.mqtt.packets import Packet, Publish, Pubrel
from bastion.mqtt.reason_codes import ReasonCode
from bastion.security.policy import Policy

log = structlog.get_logger("bastion.broker")

_ERROR_THRESHOLD = 0x80  # reason codes from here on are failures that end a flow
_V5 = 5


def live_connection(state: SessionState) -> Session | None:
    """The open connection of ``state``, if it has one packets can still go out on."""
    connection = state.connection
    return connection if connection is not None and connection.open else None


class Router:
    """Routes messages to sessions and drives their outbound flows."""

    def __init__(
        self,
        policy: Policy,
        sessions: SessionRegistry,
        trie: SubscriptionTrie,
        retained: RetainedStore[Message],
        stats: BrokerStats,
        *,
        security: SecurityLog,
        max_delivery_attempts: int = 0,
        max_publisher_hold: float = 0.0,
        journal: Journal | None = None,
    ) -> None:
        self.policy = policy
        self.sessions = sessions
        self.trie = trie
        self.retained = retained
        self.stats = stats
        self.security = security
        self.max_attempts = max_delivery_attempts  # 0: no bound
        self.backpressure = Backpressure(max_publisher_hold)
        self.journal = journal if journal is not None else MemoryJournal()
        self.next_ident = itertools.count(1).__next__  # ids of routed messages (persistence)
        # Online sessions whose queue passed its high-water mark while the current message
        # was routed: the caller holds that message's publisher (``InboundPublishes``).
        self.congested: list[SessionState] = []

    # -- sending -----------------------------------------------------------------------

    def send(self, connection: Session, packet: Packet) -> bool:
        """Send ``packet`` on ``connection``'s link and count it; False if it was not sent."""
        held = connection.held
        if held is not None:  # its CONNACK waits for a commit: everything else waits too
            held.append(packet)
            return True
        sent = connection.link.send(packet)
        is_publish = isinstance(packet, Publish)
        if sent:
            self.stats.messages_sent += 1
            if is_publish:
                self.stats.publish_messages_sent += 1
        elif is_publish:
            self.stats.publish_messages_dropped += 1
        return sent

    # -- routing -----------------------------------------------------------------------

    def publish(self, message: Message, now: float) -> int:
        """Retain ``message`` if asked and deliver it; returns how many subscribers got it."""
        if self.congested:
            self.congested.clear()  # left by a publish nobody held (a will, $SYS, retained)
        if message.retain:
            self._retain(message)
        route = self.trie.route(message.topic)
        count = self._deliver_direct(message, route.targets, now) if route.targets else 0
        for group in route.groups:
            if self._deliver_shared(message, group, now):
                count += 1
        return count

    def would_store(self, topic: str, qos: int, retain: bool) -> bool:
        """Whether a message would become durable work: retained, or a QoS 1/2 copy for a
        durable session (a matching subscription above QoS 0, shared ones included)."""
        if retain and not topic.startswith("$"):
            return True
        if not qos:
            return False
        sessions = self.sessions
        route = self.trie.route(topic)
        for target in route.targets:
            state = sessions.get(target.client_id)
            if target.qos and state is not None and durable(state) is not None:
                return True
        for group in route.groups:
            for client_id, entry in group.members.items():
                state = sessions.get(client_id)
                if entry.subscription.qos and state is not None and durable(state) is not None:
                    return True
        return False

    def _retain(self, message: Message) -> None:
        journal = self.journal
        keep = journal.enabled and not message.topic.startswith("$")  # $SYS is rebuilt
        if message.payload:
            self.retained.set(message.topic, message)
            if keep:
                journal.retained(message)
        else:
            self.retained.delete(message.topic)
            if keep:
                journal.retained_gone(message.topic)
        self.stats.retained_count = len(self.retained)

    def _deliver_direct(
        self, message: Message, targets: tuple[RouteTarget, ...], now: float
    ) -> int:
        """One copy per matching client that may read the topic (§3.3.4, §4.7.2).

        QoS 0 copies of one shape (protocol version, RETAIN, subscription identifiers) share
        one ``Publish``, so each connection's encoder can reuse the bytes of the last one.
        """
        topic = message.topic
        origin = message.origin
        may_receive = self.policy.may_receive
        sessions = self.sessions
        expired = message.is_expired(now)
        shapes: dict[tuple[bool, bool, tuple[int, ...]], Publish] = {}
        count = 0
        for target in targets:
            if target.client_id == origin and target.no_local:
                merged = target.merged_for_origin()
                if merged is None:
                    continue
                sub_qos, rap, identifiers = merged
            else:
                sub_qos, rap, identifiers = (
                    target.qos,
                    target.retain_as_published,
                    target.identifiers,
                )
            state = sessions.get(target.client_id)
            if state is None or not may_receive(state.identity, topic):
                continue
            count += 1
            qos = message.qos if message.qos < sub_qos else sub_qos
            retain = message.retain and rap
            if qos:
                self.deliver(state, Delivery(message, qos, retain, identifiers), now)
                continue
            connection = state.connection
            if connection is None or not connection.open or expired:
                continue  # QoS 0 is not queued for a client that is away
            v5 = connection.protocol_version >= _V5
            shape = (v5, retain, identifiers if v5 else ())
            packet = shapes.get(shape)
            if packet is None:
                packet = shapes[shape] = publish_packet(
                    message, 0, retain, shape[2], None, connection.protocol_version, now
                )
            self.send(connection, packet)
        return count

    def _deliver_shared(self, message: Message, group: SharedGroup, now: float) -> bool:
        entry = self._pick(group, message.topic, exclude=None, offline_too=True)
        if entry is None:
            return False
        state = self.sessions.get(entry.client_id)
        if state is None:
            return False
        self.deliver(state, self._shared_copy(message, entry, group), now)
        return True

    def _pick(
        self, group: SharedGroup, topic: str, *, exclude: str | None, offline_too: bool
    ) -> SubscriptionEntry | None:
        """One member of ``group`` to receive ``topic``: online ones first."""

        def receiver(online: bool) -> Callable[[str], bool]:
            def eligible(client_id: str) -> bool:
                state = self.sessions.get(client_id)
                return (
                    state is not None
                    and client_id != exclude
                    and (live_connection(state) is not None) == online
                    and self.policy.may_receive(state.identity, topic)
                )

            return eligible

        entry = group.pick(receiver(True))
        if entry is None and offline_too:
            entry = group.pick(receiver(False))
        return entry

    @staticmethod
    def _shared_copy(
        message: Message, entry: SubscriptionEntry, group: SharedGroup, attempts: int = 0
    ) -> Delivery:
        sub = entry.subscription
        identifiers = () if entry.identifier is None else (entry.identifier,)
        retain = message.retain and sub.retain_as_published
        return Delivery(message, min(message.qos, sub.qos), retain, identifiers, group, attempts)

    def send_retained(
        self, connection: Session, topic_filter: str, qos: int, identifier: int | None, now: float
    ) -> None:
        """Deliver the retained messages matching a new subscription (§3.3.1.3)."""
        state = connection.state
        identifiers = () if identifier is None else (identifier,)
        expired: list[str] = []
        for topic, message in list(self.retained.match(topic_filter)):
            if message.is_expired(now):
                expired.append(topic)
            elif self.policy.may_receive(state.identity, topic):
                delivery = Delivery(message, min(message.qos, qos), True, identifiers)
                self.deliver(state, delivery, now)
        for topic in expired:
            self.retained.delete(topic)
        if expired:
            self.stats.retained_count = len(self.retained)

    # -- one session's outbound flow ---------------------------------------------------

    def deliver(self, state: SessionState, delivery: Delivery, now: float) -> None:
        """Send ``delivery`` now if the window allows, else queue it (QoS 0: send or drop)."""
        connection = live_connection(state)
        if delivery.qos == 0:
            if connection is not None and not delivery.message.is_expired(now):
                packet = outgoing_publish(delivery, None, connection.protocol_version, now)
                self.send(connection, packet)
            return
        outbox = state.outbox
        if connection is not None and not outbox.queue and outbox.has_room(connection.window):
            self._start(connection, delivery, now)
        else:
            queued = outbox.enqueue(delivery)
            if not queued:
                purged = outbox.purge_expired(now)
                self.stats.publish_messages_dropped += purged
                queued = bool(purged) and outbox.enqueue(delivery)
            if (
                connection is not None
                and self.backpressure.enabled
                and outbox.lagging_until <= now
                and (not queued or high_water(outbox))
            ):
                self.congested.append(state)
            if not queued:
                self._queue_full(state, delivery, now)
                return
        if outbox.overflowing:  # a copy fits again: the queue-full episode is over
            outbox.overflowing = False
            self.security.end(Defence.QUEUE_FULL, state.client_id)

    def _queue_full(self, state: SessionState, delivery: Delivery, now: float) -> None:
        """Drop the newest copy: the queue is full in messages or bytes (tail drop)."""
        self.stats.publish_messages_dropped += 1
        outbox = state.outbox
        detail = ""  # only the first drop of an episode is logged: no text for the others
        if not outbox.overflowing:
            outbox.overflowing = True
            detail = (
                f"queue full ({len(outbox.queue)} messages, {outbox.queued_bytes} bytes): "
                "newest copies dropped"
            )
        self.security.hit(
            Defence.QUEUE_FULL, state.identity, now, detail=detail, topic=delivery.message.topic
        )

    def _exhausted(self, attempts: int) -> bool:
        """True once a flow was transmitted ``max_delivery_attempts`` times."""
        return 0 < self.max_attempts <= attempts

    def _start(self, connection: Session, delivery: Delivery, now: float) -> None:
        if delivery.message.is_expired(now):
            self.stats.publish_messages_dropped += 1
            return
        if self._exhausted(delivery.attempts):  # a shared copy other members failed on
            self._report_exhausted(connection.state, delivery.message.topic, (1, 0), now)
            return
        outbox = connection.state.outbox
        item = outbox.start(delivery, delivery.attempts + 1)
        packet = outgoing_publish(delivery, item.packet_id, connection.protocol_version, now)
        journal = outbox.journal
        if journal is not None and delivery.qos == 2:
            # Exactly once across a crash: the packet id this copy goes out under must be
            # durable first, or a restarted broker could resend it under another id.
            def send_when_durable(failure: int) -> None:
                if not failure and outbox.inflight.get(item.packet_id) is item:
                    self._send_started(connection, outbox, item.packet_id, packet)

            journal.after_commit(send_when_durable)
            return
        self._send_started(connection, outbox, item.packet_id, packet)

    def _send_started(
        self, connection: Session, outbox: Outbox, packet_id: int, packet: Publish
    ) -> None:
        if not self.send(connection, packet):
            outbox.finish(packet_id)  # as if delivered (§3.1.2.11.4)

    def pump(self, state: SessionState, now: float) -> None:
        """Move queued messages into the inflight window while it has room."""
        connection = live_connection(state)
        if connection is None:
            return
        outbox = state.outbox
        while outbox.queue and outbox.has_room(connection.window):
            self._start(connection, outbox.dequeue(), now)
        if self.backpressure.holds_for(state.client_id) and low_water(outbox):
            self.backpressure.relieve(state.client_id)

    def resume(self, connection: Session, now: float) -> None:
        """Resend the unacknowledged flows in their original order, then drain the queue.

        A flow already transmitted ``max_delivery_attempts`` times is dropped instead: the
        client keeps reconnecting without acknowledging it (§4.4 asks for a resend; the
        bound is this server's defence against a message that breaks its receiver).
        """
        outbox = connection.state.outbox
        exhausted: list[Inflight] = []
        for item in list(outbox.inflight.values()):
            delivery = item.delivery
            if not item.released and delivery.qos == 1 and delivery.message.is_expired(now):
                outbox.finish(item.packet_id)
                self.stats.publish_messages_dropped += 1
                continue
            if self._exhausted(item.attempts):
                outbox.finish(item.packet_id)
                exhausted.append(item)
                continue
            item.attempts += 1
            outbox.touch(item)
            if item.released:
                self.send(connection, Pubrel(item.packet_id))
                continue
            packet = outgoing_publish(
                delivery, item.packet_id, connection.protocol_version, now, dup=True
            )
            if not self.send(connection, packet):
                outbox.finish(item.packet_id)
        if exhausted:
            released = sum(1 for item in exhausted if item.released)
            topic = exhausted[0].delivery.message.topic
            counts = (len(exhausted) - released, released)
            self._report_exhausted(connection.state, topic, counts, now)
        self.pump(connection.state, now)

    def _report_exhausted(
        self, state: SessionState, topic: str, counts: tuple[int, int], now: float
    ) -> None:
        """Count and report flows abandoned after ``max_delivery_attempts`` transmissions.

        ``counts`` is (PUBLISH flows, PUBREL flows); only the first lose a message.
        """
        publishes, releases = counts
        self.stats.publish_messages_dropped += publishes
        self.security.report(
            Defence.REDELIVERY_EXHAUSTED,
            state.identity,
            now,
            detail=f"sent {self.max_attempts} times without acknowledgement: "
            f"{publishes} PUBLISH and {releases} PUBREL flows dropped",
            topic=topic,
            count=publishes + releases,
        )

    def on_puback(self, connection: Session, packet_id: int, now: float) -> None:
        """PUBACK from the client ends a QoS 1 flow; unknown ids are ignored."""
        outbox = connection.state.outbox
        item = outbox.inflight.get(packet_id)
        if item is not None and item.delivery.qos == 1:
            outbox.finish(packet_id)
            self.pump(connection.state, now)

    def on_pubrec(self, connection: Session, packet_id: int, reason: int, now: float) -> None:
        """PUBREC: answer PUBREL, or end the flow if the client refused the message."""
        outbox = connection.state.outbox
        item = outbox.inflight.get(packet_id)
        if item is None or item.delivery.qos != 2:
            if connection.protocol_version >= 5:
                self.send(connection, Pubrel(packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND))
            return
        if reason >= _ERROR_THRESHOLD:
            outbox.finish(packet_id)
            self.pump(connection.state, now)
            return
        item.released = True
        item.attempts = 1  # from now on the flow waits on the PUBREL
        outbox.touch(item)
        journal = outbox.journal
        if journal is None:
            self.send(connection, Pubrel(packet_id))
            return

        def release_when_durable(failure: int) -> None:  # a resend must be PUBREL, not PUBLISH
            if not failure:
                self.send(connection, Pubrel(packet_id))

        journal.after_commit(release_when_durable)

    def on_pubcomp(self, connection: Session, packet_id: int, now: float) -> None:
        """PUBCOMP ends a QoS 2 flow that was released; anything else is ignored."""
        outbox = connection.state.outbox
        item = outbox.inflight.get(packet_id)
        if item is not None and item.released:
            outbox.finish(packet_id)
            self.pump(connection.state, now)

    # -- shared subscriptions ----------------------------------------------------------

    def redistribute(self, state: SessionState, now: float, *, ending: bool) -> None:
        """Hand copies ``state`` got through shared subscriptions to other group members.

        On disconnect only online members take them (the rest wait for the client); when the
        session ends, offline members' queues are used too and what is left is discarded.
        """

        def move(delivery: Delivery) -> bool:
            group = delivery.group
            assert group is not None
            message = delivery.message
            if message.is_expired(now):
                self.stats.publish_messages_dropped += 1
                return True
            entry = self._pick(group, message.topic, exclude=state.client_id, offline_too=ending)
            target = None if entry is None else self.sessions.get(entry.client_id)
            if entry is None or target is None:
                return ending
            self.deliver(target, self._shared_copy(message, entry, group, delivery.attempts), now)
            return True

        state.outbox.take_shared(move)


__all__ = ["Router", "live_connection"]
