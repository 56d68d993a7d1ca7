"""Inbound application messages: a client's PUBLISH and PUBREL, checked before routing.

``core.py`` dispatches PUBLISH and PUBREL here. ``InboundPublishes`` applies the server's
capabilities (the connection's Maximum QoS, Retain Available), the content rules of
``security.validation``, authorization and the bounds on QoS 2 messages awaiting PUBREL
(how many, how long), then hands the message to the ``Router`` (``delivery.py``) and
answers PUBACK/PUBREC/PUBCOMP.

A refused message is never routed. It is answered in the PUBACK/PUBREC when there is one to
carry a reason code (MQTT 5, QoS 1/2); otherwise (QoS 0, MQTT 3.1.1) the connection is
closed, with DISCONNECT(reason) on MQTT 5 (§4.13: the receiver of a packet it will not
process closes the connection).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import structlog

from bastion.broker.delivery import Router
from bastion.broker.journal import durable
from bastion.broker.messages import is_broker_topic, message_from_publish
from bastion.broker.securitylog import DEFENCE_OF_RULE, SecurityLog
from bastion.broker.sessions import Session, SessionRegistry, SessionState
from bastion.broker.stats import Defence
from bastion.config.schema import MqttSettings
from bastion.mqtt.packets import (
    NO_PROPERTIES,
    Packet,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
)
from bastion.mqtt.reason_codes import ReasonCode
from bastion.security.policy import Policy
from bastion.security.validation import MessageRules

log = structlog.get_logger("bastion.broker")

_V5 = ProtocolVersion.MQTT_5
_NOT_AUTHORIZED_TEXT = "not authorized"
_STORE_FULL_TEXT = "the broker's store is full: durable messages are refused until it has room"
_AWAITING_REL_FULL = "too many QoS 2 messages awaiting PUBREL (max_awaiting_rel)"

Closer = Callable[[Session, int], None]
"""Closes a connection for a reason (DISCONNECT on MQTT 5); its will is published."""


def problem_properties(session: Session, text: str) -> Properties:
    """A reason string for an error answer, if the client wants them."""
    if session.protocol_version >= _V5 and session.problem_information:
        return Properties(reason_string=text)
    return NO_PROPERTIES


class ReleaseTimer:
    """When inbound QoS 2 packet ids still waiting for PUBREL are forgotten.

    Ids enter ``SessionState.inbound_qos2`` in arrival order with ``now + timeout``, so the
    first one of a session is its oldest: the heap holds one entry per session with pending
    ids, not one per message.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout  # 0: never
        self._heap: list[tuple[float, int, SessionState]] = []
        self._scheduled: set[SessionState] = set()
        self._seq = 0

    def received(self, state: SessionState, packet_id: int, now: float) -> None:
        """Record a QoS 2 id that now waits for its PUBREL."""
        if not self.timeout:
            state.inbound_qos2[packet_id] = math.inf
            return
        deadline = now + self.timeout
        state.inbound_qos2[packet_id] = deadline
        if state not in self._scheduled:
            self._push(deadline, state)

    def _push(self, deadline: float, state: SessionState) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, state))
        self._scheduled.add(state)

    def pop_expired(
        self, now: float, is_current: Callable[[SessionState], bool]
    ) -> list[tuple[SessionState, int]]:
        """Forget the ids whose deadline passed: (session, how many) per session."""
        expired: list[tuple[SessionState, int]] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, state = heapq.heappop(self._heap)
            self._scheduled.discard(state)
            if not is_current(state):
                continue
            pending = state.inbound_qos2
            count = 0
            for packet_id, deadline in list(pending.items()):
                if deadline > now:
                    self._push(deadline, state)
                    break
                del pending[packet_id]
                count += 1
            if count:
                expired.append((state, count))
        return expired

    def next_deadline(self) -> float | None:
        """The earliest moment an id may be due (possibly early: nothing may be due then)."""
        return self._heap[0][0] if self._heap else None


class InboundPublishes:
    """Checks, routes and acknowledges the application messages clients publish."""

    def __init__(
        self,
        settings: MqttSettings,
        policy: Policy,
        router: Router,
        sessions: SessionRegistry,
        *,
        security: SecurityLog,
        close: Closer,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.router = router
        self.sessions = sessions
        self.security = security
        self.rules = MessageRules.from_settings(settings)
        self.releases = ReleaseTimer(settings.awaiting_rel_timeout)
        self._close = close

    def on_publish(self, session: Session, packet: Publish, now: float) -> None:
        """A PUBLISH from ``session``'s client."""
        self.router.stats.publish_messages_received += 1
        error = self._capability_error(session, packet)
        if error is not None:
            self._protocol_error(session, error, "PUBLISH beyond the server's capabilities", now)
            return
        state = session.state
        packet_id = packet.packet_id
        if packet.qos == 2 and packet_id in state.inbound_qos2:
            self.router.send(session, Pubrec(packet_id))  # a resend: routed the first time
            return
        rejection = self.rules.check_message(packet.topic, packet.payload, packet.properties)
        if rejection is not None:
            defence = DEFENCE_OF_RULE[rejection.rule]
            self._reject(session, packet, rejection.reason, defence, rejection.message, now)
        elif self.router.journal.full and self.router.would_store(
            packet.topic, packet.qos, packet.retain
        ):
            self._refuse_store_full(session, packet)
        elif packet.qos == 2 and len(state.inbound_qos2) >= self.settings.max_awaiting_rel:
            self._reject(
                session,
                packet,
                ReasonCode.QUOTA_EXCEEDED,
                Defence.AWAITING_REL_QUOTA,
                _AWAITING_REL_FULL,
                now,
            )
        else:
            self._accept(session, packet, now)

    def _refuse_store_full(self, session: Session, packet: Publish) -> None:
        """Refuse durable work while the store is full: 0x97 (MQTT 5), else close (3.1.1);
        a QoS 0 message (retained) is dropped. The runtime logs the full store once."""
        self.router.stats.store_refused += 1
        packet_id = packet.packet_id
        if packet_id is None:
            self.router.stats.publish_messages_dropped += 1
        elif session.protocol_version < _V5:
            self._close(session, ReasonCode.QUOTA_EXCEEDED)
        else:
            props = problem_properties(session, _STORE_FULL_TEXT)
            if packet.qos == 1:
                self.router.send(session, Puback(packet_id, ReasonCode.QUOTA_EXCEEDED, props))
            else:
                self.router.send(session, Pubrec(packet_id, ReasonCode.QUOTA_EXCEEDED, props))

    def _capability_error(self, session: Session, packet: Publish) -> int | None:
        """Reason code for a PUBLISH the client was told not to send (§3.2.2.3.4 - .5).

        Above the connection's Maximum QoS (server, listener, user) it is 0x9B: DISCONNECT
        on MQTT 5; an MQTT 3.1.1 client, which was never told, is disconnected too.
        """
        if packet.qos > session.max_qos:
            return ReasonCode.QOS_NOT_SUPPORTED
        if packet.retain and not self.settings.retain_available:
            return ReasonCode.RETAIN_NOT_SUPPORTED
        if packet.qos and packet.packet_id is None:
            return ReasonCode.PROTOCOL_ERROR
        return None

    def _protocol_error(self, session: Session, reason: int, detail: str, now: float) -> None:
        self.security.report(
            Defence.PROTOCOL_VIOLATION, session.identity, now, reason=reason, detail=detail
        )
        self._close(session, reason)

    def _reject(  # noqa: PLR0917 - private; the refusal's parts
        self,
        session: Session,
        packet: Publish,
        reason: int,
        defence: Defence,
        message: str,
        now: float,
    ) -> None:
        """Refuse ``packet`` unrouted: in its acknowledgement if it has one, else by closing."""
        self.security.hit(
            defence, session.identity, now, reason=reason, detail=message, topic=packet.topic
        )
        packet_id = packet.packet_id
        if packet_id is None or session.protocol_version < _V5:
            self._close(session, reason)
            return
        props = problem_properties(session, message)
        if packet.qos == 1:
            self.router.send(session, Puback(packet_id, reason, props))
        else:
            self.router.send(session, Pubrec(packet_id, reason, props))

    def _accept(self, session: Session, packet: Publish, now: float) -> None:
        """Authorize, route and acknowledge a message that passed every check."""
        state = session.state
        allowed = not is_broker_topic(packet.topic) and self.policy.may_publish(
            session.identity, packet.topic
        )
        matched = 0
        router = self.router
        journal = router.journal
        mark = journal.changes()
        if allowed:
            message = message_from_publish(packet, state.client_id, now, router.next_ident())
            matched = router.publish(message, now)
            if router.congested:  # some subscriber's queue is filling: slow this sender down
                router.backpressure.hold(session, router.congested, now)
                router.congested.clear()
        else:
            self.security.hit(
                Defence.ACL_DENIED,
                session.identity,
                now,
                reason=ReasonCode.NOT_AUTHORIZED,
                detail="publish not allowed by the ACL",
                topic=packet.topic,
            )
        packet_id = packet.packet_id
        if packet_id is None:
            return
        code, props = ReasonCode.SUCCESS, NO_PROPERTIES
        if session.protocol_version >= _V5:
            if not allowed:
                code = ReasonCode.NOT_AUTHORIZED
                props = problem_properties(session, _NOT_AUTHORIZED_TEXT)
            elif not matched:
                code = ReasonCode.NO_MATCHING_SUBSCRIBERS
        ack: Puback | Pubrec
        if packet.qos == 1:
            ack = Puback(packet_id, code, props)
        else:
            if code < ReasonCode.UNSPECIFIED_ERROR:
                self.releases.received(state, packet_id, now)
                owner = durable(state)
                if owner is not None:
                    owner.inbound(state.client_id, packet_id)
            ack = Pubrec(packet_id, code, props)
        self._acknowledge(session, ack, journal.changes() != mark)

    def _acknowledge(self, session: Session, ack: Packet, wrote: bool) -> None:
        """Send ``ack`` once what it promises is durable (at once if nothing was written).

        Acknowledgements keep their order per connection: one waiting for a commit makes
        the next ones wait too.
        """
        journal = self.router.journal
        if not journal.enabled or (not wrote and not session.deferred):
            self.router.send(session, ack)
            return
        session.deferred += 1

        def send(failure: int) -> None:
            session.deferred -= 1
            if not failure:
                self.router.send(session, ack)
                return
            if not isinstance(ack, Pubcomp):
                self.router.stats.store_refused += 1
            if session.protocol_version >= _V5 and not isinstance(ack, Pubcomp):
                # Not durable, so not accepted: say why (0x97 store full, 0x80 otherwise).
                # A refused QoS 2 flow is over (§4.3.3): the id may come back as a new one.
                if isinstance(ack, Pubrec):
                    session.state.inbound_qos2.pop(ack.packet_id, None)
                self.router.send(session, _refused(ack, failure))
            elif session.open:  # 3.1.1 cannot say it: no promise; the client resends later
                self._close(session, failure)

        journal.after_commit(send)

    def on_pubrel(self, session: Session, packet: Pubrel) -> None:
        """PUBREL completes an inbound QoS 2 flow: answer PUBCOMP (0x92 for unknown ids)."""
        code = ReasonCode.SUCCESS
        state = session.state
        known = state.inbound_qos2.pop(packet.packet_id, None) is not None
        if not known and session.protocol_version >= _V5:
            code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
        owner = durable(state) if known else None
        if owner is not None:
            owner.inbound(state.client_id, packet.packet_id, done=True)
        # After PUBCOMP the client may reuse the id: its removal must be durable first.
        self._acknowledge(session, Pubcomp(packet.packet_id, code), owner is not None)

    def expire(self, now: float) -> None:
        """Forget QoS 2 ids that waited ``awaiting_rel_timeout`` for their PUBREL."""

        def is_current(state: SessionState) -> bool:
            return self.sessions.get(state.client_id) is state

        for state, count in self.releases.pop_expired(now, is_current):
            self.security.report(
                Defence.AWAITING_REL_TIMEOUT,
                state.identity,
                now,
                detail=f"{count} QoS 2 packet identifiers got no PUBREL in "
                f"{self.releases.timeout:g} s and were forgotten",
                count=count,
            )

    def next_deadline(self) -> float | None:
        return self.releases.next_deadline()


def _refused(ack: Packet, reason: int) -> Packet:
    """``ack`` (PUBACK or PUBREC) carrying a failure reason instead of success."""
    if isinstance(ack, Puback):
        return Puback(ack.packet_id, reason)
    assert isinstance(ack, Pubrec)
    return Pubrec(ack.packet_id, reason)


__all__ = ["Closer", "InboundPublishes", "ReleaseTimer", "problem_properties"]
