"""The broker core: connections, packets, timers and shutdown, with time as an argument.

The transport calls ``Broker.connect/receive/connection_lost`` through the ``ClientLink``
seam (``links.py``); the runtime calls ``tick`` and ``shutdown``. Routing lives in
``delivery.py``, inbound PUBLISH/PUBREL in ``inbound.py``, SUBSCRIBE/UNSUBSCRIBE in
``subscribing.py``, session state in ``sessions.py``, CONNECT checks in ``admission.py``,
persistence in ``journal.py``/``restore.py``; defences report through ``securitylog.py`` to
the ``on_security_event`` sink.
"""

from __future__ import annotations

import secrets

import structlog

from bastion import __version__
from bastion.broker.admission import (
    Admission,
    Refusal,
    admit,
    connack_properties,
    refusal_properties,
)
from bastion.broker.delivery import Router
from bastion.broker.inbound import InboundPublishes
from bastion.broker.journal import Journal, MemoryJournal, arm, durable
from bastion.broker.links import ClientLink
from bastion.broker.messages import Message, message_from_will
from bastion.broker.retained import RetainedStore
from bastion.broker.securitylog import SecurityEventSink, SecurityLog
from bastion.broker.sessions import Session, SessionRegistry, SessionState
from bastion.broker.stats import BrokerStats, Defence
from bastion.broker.subscribing import SubscriptionRequests
from bastion.broker.subscriptions import SubscriptionTrie
from bastion.broker.sys_topics import SysTopics
from bastion.broker.wills import WillScheduler
from bastion.config.schema import MqttSettings
from bastion.mqtt.connection import ProtocolViolation
from bastion.mqtt.packets import (
    NO_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    Unsubscribe,
    Will,
)
from bastion.mqtt.reason_codes import ReasonCode
from bastion.security.policy import AuthResult, ClientIdentity, Policy

log = structlog.get_logger("bastion.broker")

_V5 = ProtocolVersion.MQTT_5


class Broker:
    """Sessions, routing, wills, expiry and ``$SYS`` of one MQTT server; no I/O of its own."""

    def __init__(
        self,
        settings: MqttSettings,
        policy: Policy,
        *,
        version: str = __version__,
        on_security_event: SecurityEventSink | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.journal = journal if journal is not None else MemoryJournal()
        self.on_security_event = on_security_event  # the audit sink; may be set later
        self.stats = BrokerStats()
        self.security = SecurityLog(self.stats, lambda: self.on_security_event)
        self.sessions = SessionRegistry()
        self.subscriptions = SubscriptionTrie()
        self.retained: RetainedStore[Message] = RetainedStore()
        self.wills = WillScheduler()
        self.router = Router(
            policy,
            self.sessions,
            self.subscriptions,
            self.retained,
            self.stats,
            security=self.security,
            max_delivery_attempts=settings.max_delivery_attempts,
            max_publisher_hold=settings.max_publisher_hold,
            journal=self.journal,
        )
        self.inbound = InboundPublishes(
            settings, policy, self.router, self.sessions, security=self.security, close=self._close
        )
        self.rules = self.inbound.rules
        self.requests = SubscriptionRequests(
            settings,
            policy,
            self.sessions,
            self.subscriptions,
            self.router,
            self.rules,
            self.security,
            protocol_error=self._protocol_error,
            close=self._close,
            refresh_counts=self.refresh_counts,
        )
        self.sys_topics = SysTopics(version, settings.sys_interval, self.stats)
        self._stopped = False

    # -- connections -------------------------------------------------------------------

    def connect(
        self,
        link: ClientLink,
        packet: Connect,
        now: float,
        *,
        auth: AuthResult | None = None,
        listener_max_qos: int | None = None,
    ) -> Session | None:
        """Admit a CONNECT and answer CONNACK; None (and the link closed) if refused.

        ``auth``: the policy's authentication answer, when the transport already has it.
        ``listener_max_qos``: the QoS ceiling of the listener the client came through; with
        the server's and the user's it makes the connection's Maximum QoS.
        """
        self.stats.messages_received += 1
        result: Admission | Refusal
        if self._stopped:
            result = Refusal(ReasonCode.SERVER_UNAVAILABLE, "the server is shutting down")
        else:
            result = admit(
                packet,
                link.peer,
                self.settings,
                self.policy,
                self._new_client_id,
                rules=self.rules,
                auth=auth,
                listener_max_qos=listener_max_qos,
            )
        if isinstance(result, Refusal):
            self._refuse(link, packet, result, now)
            return None
        state, present = self._bind(result, packet.clean_start, now)
        state.identity = result.identity
        state.expiry_interval = result.session_expiry
        state.expires_at = None
        arm(self.journal, state)
        connection = Session(
            link,
            state,
            packet.protocol_version,
            window=result.window,
            keep_alive=result.keep_alive,
            problem_information=result.problem_information,
            max_qos=result.max_qos,
        )
        connection.will = packet.will
        connection.connect_expiry_interval = result.requested_expiry
        connection.auth_method = result.auth_method
        state.connection = connection
        self.stats.client_connected()
        self.refresh_counts()
        props = NO_PROPERTIES
        if packet.protocol_version >= _V5:
            props = connack_properties(result, packet, self.settings)
        connack = Connack(present, ReasonCode.SUCCESS, props)
        journal = durable(state)
        if journal is not None and not present:
            # A new durable session: CONNACK promises a session that survives a crash, so
            # it waits for the commit, and everything else for the client waits behind it.
            connection.held = []
            journal.after_commit(lambda failure: self._release(connection, connack, failure))
        else:
            self.router.send(connection, connack)
        link.set_keep_alive(result.keep_alive)
        log.info(
            "client.connected",
            client_id=state.client_id,
            peer=link.peer,
            protocol=packet.protocol_version,
            session_present=present,
        )
        if present:
            self.requests.cap(state.client_id, result.max_qos)
            self.router.resume(connection, now)
        return connection

    def _release(self, connection: Session, connack: Connack, failure: int) -> None:
        """The new durable session is committed (or not): CONNACK, then what waited."""
        held, connection.held = connection.held or [], None
        if failure:
            if connection.open:
                self._close(connection, failure)
            return
        self.router.send(connection, connack)
        for packet in held:
            self.router.send(connection, packet)

    def _new_client_id(self) -> str:
        while True:
            client_id = self.settings.client_id_prefix + secrets.token_hex(8)
            if client_id not in self.sessions:
                return client_id

    def _refuse(self, link: ClientLink, packet: Connect, refusal: Refusal, now: float) -> None:
        connack = Connack(False, refusal.reason, refusal_properties(refusal, packet))
        if link.send(connack):
            self.stats.messages_sent += 1
        link.close(None)
        log.info(
            "client.refused", client_id=packet.client_id, peer=link.peer, reason=refusal.reason
        )
        if refusal.defence is not None:
            identity = ClientIdentity(packet.client_id, packet.username, link.peer)
            will = packet.will
            self.security.report(
                refusal.defence,
                identity,
                now,
                reason=refusal.reason,
                detail=refusal.message,
                topic=None if will is None else will.topic,
            )

    def protocol_violation(
        self, session: Session | None, peer: str, violation: ProtocolViolation, now: float
    ) -> None:
        """The transport closes a connection whose bytes broke the protocol: count, report.

        ``session`` is None when the connection had no session yet (a bad CONNECT). The
        transport still calls ``connection_lost`` for the session afterwards.
        """
        defence = Defence.PROTOCOL_VIOLATION
        if violation.invalid_utf8:
            defence = Defence.INVALID_UTF8
        self.security.report(
            defence,
            None if session is None else session.identity,
            now,
            peer=peer,
            reason=violation.reason,
            detail=violation.message,
        )

    def _bind(
        self, admission: Admission, clean_start: bool, now: float
    ) -> tuple[SessionState, bool]:
        """The session for a new connection, and whether it existed (Session Present)."""
        client_id = admission.client_id
        state = self.sessions.get(client_id)
        if state is not None and state.connection is not None:
            self._take_over(state.connection, now)
            state = self.sessions.get(client_id)  # gone if its expiry interval was 0
        if state is not None and clean_start:
            self._end_session(state, now)
            state = None
        if state is not None:
            if self.wills.cancel(client_id):  # back before the will delay ran out (§3.1.3.2.2)
                journal = durable(state)
                if journal is not None:
                    journal.will_gone(client_id)
            return state, True
        settings = self.settings
        state = SessionState(
            client_id,
            admission.identity,
            settings.max_queued_messages,
            max_queued_bytes=settings.max_queued_bytes,
            max_inflight_bytes=settings.max_inflight_bytes,
        )
        self.sessions.add(state)
        return state, False

    def _take_over(self, old: Session, now: float) -> None:
        """A new connection claims ``old``'s client id: close ``old`` as if its link broke."""
        log.info("client.taken_over", client_id=old.client_id, peer=old.link.peer)
        old.link.close(ReasonCode.SESSION_TAKEN_OVER)
        self._connection_ended(old, now)

    def connection_lost(self, session: Session, now: float) -> None:
        """The transport's connection ended (for any reason, DISCONNECT included)."""
        if not session.attached:  # taken over, or the server already let it go
            session.open = False
            return
        log.info("client.disconnected", client_id=session.client_id, peer=session.link.peer)
        self._connection_ended(session, now)

    def _connection_ended(self, connection: Session, now: float) -> None:
        """Unbind ``connection``: its will, then the session ends or waits offline."""
        connection.open = False
        backpressure = self.router.backpressure
        backpressure.forget(connection)
        state = connection.state
        if state.connection is not connection:
            return
        state.connection = None
        backpressure.relieve(state.client_id)  # an offline queue holds nobody
        self.stats.clients_connected -= 1
        self.security.end_connection(state.client_id)
        will, connection.will = connection.will, None
        if will is not None:
            delay = 0
            if connection.protocol_version >= _V5:
                delay = will.properties.will_delay_interval or 0
            if delay > 0 and state.expiry_interval > 0:
                self.wills.schedule(state.client_id, will, now + delay)
                journal = durable(state)
                if journal is not None:
                    journal.will(state.client_id, will, now + delay)
            else:
                self._publish_will(state.client_id, will, now)
        if state.expiry_interval == 0:
            self._end_session(state, now)
        else:
            self.sessions.go_offline(state, now)
            journal = durable(state)
            if journal is not None:
                username = state.identity.username
                journal.session(state.client_id, state.expiry_interval, username, journal.wall(now))
            self.router.redistribute(state, now, ending=False)

    def _end_session(self, state: SessionState, now: float) -> None:
        """Discard an offline session; a delayed will still pending is published now."""
        journal = durable(state)
        if journal is not None:
            journal.session_gone(state.client_id)  # its subscriptions, outbox, will too
            state.outbox.journal = None
        self.sessions.remove(state)
        self.subscriptions.remove_client(state.client_id)
        self.security.end_session(state.client_id)
        self.refresh_counts()
        self.router.redistribute(state, now, ending=True)
        will = self.wills.take(state.client_id)
        if will is not None:
            self._publish_will(state.client_id, will, now)

    def _publish_will(self, client_id: str, will: Will, now: float) -> None:
        log.debug("will.published", client_id=client_id, topic=will.topic)
        router = self.router
        router.publish(message_from_will(will, client_id, now, router.next_ident()), now)

    def refresh_counts(self) -> None:
        self.stats.clients_total = len(self.sessions)
        self.stats.subscriptions_count = len(self.subscriptions)

    # -- packets -----------------------------------------------------------------------

    def receive(self, session: Session, packet: Packet, now: float) -> None:
        """Handle one packet from a connected client (one switch on the packet type)."""
        if not session.open or not session.attached:
            return
        self.stats.messages_received += 1
        router = self.router
        match packet:
            case Publish():
                self.inbound.on_publish(session, packet, now)
            case Puback():
                router.on_puback(session, packet.packet_id, now)
            case Pubrec():
                router.on_pubrec(session, packet.packet_id, packet.reason_code, now)
            case Pubrel():
                self.inbound.on_pubrel(session, packet)
            case Pubcomp():
                router.on_pubcomp(session, packet.packet_id, now)
            case Subscribe():
                self.requests.on_subscribe(session, packet, now)
            case Unsubscribe():
                self.requests.on_unsubscribe(session, packet)
            case Pingreq():
                router.send(session, Pingresp())
            case Disconnect():
                self._on_disconnect(session, packet, now)
            case Auth() if (
                session.auth_method is not None and packet.reason_code == ReasonCode.REAUTHENTICATE
            ):
                # Re-authentication (§4.12.1) is not offered: the client must reconnect.
                self._protocol_error(
                    session,
                    ReasonCode.BAD_AUTHENTICATION_METHOD,
                    "re-authentication is not supported",
                    now,
                )
            case _:  # CONNECT again, AUTH outside an exchange, or a server-to-client packet
                self._protocol_error(
                    session, ReasonCode.PROTOCOL_ERROR, f"unexpected {type(packet).__name__}", now
                )

    def _protocol_error(self, session: Session, reason: int, detail: str, now: float) -> None:
        """Close the connection for a protocol error; its will is published (§3.1.2.5)."""
        self.security.report(
            Defence.PROTOCOL_VIOLATION, session.identity, now, reason=reason, detail=detail
        )
        self._close(session, reason)

    def _close(self, session: Session, reason: int) -> None:
        """Close the connection (DISCONNECT with ``reason`` on MQTT 5); the will goes out."""
        log.info("client.closed", client_id=session.client_id, reason=f"0x{reason:02X}")
        session.open = False
        session.link.close(reason if session.protocol_version >= _V5 else None)

    def _on_disconnect(self, session: Session, packet: Disconnect, now: float) -> None:
        """Client DISCONNECT: only Normal disconnection (0x00) discards the will (§3.1.2.5)."""
        if session.protocol_version >= _V5:
            requested = packet.properties.session_expiry_interval
            if requested is not None:
                if session.connect_expiry_interval == 0 and requested > 0:
                    self._protocol_error(  # §3.14.2.2.2
                        session, ReasonCode.PROTOCOL_ERROR, "session expiry set after 0", now
                    )
                    return
                expiry = min(requested, self.settings.max_session_expiry_interval)
                session.state.expiry_interval = expiry
        if packet.reason_code == ReasonCode.NORMAL_DISCONNECTION:
            session.will = None
        session.open = False
        session.link.close(None)

    # -- timers ------------------------------------------------------------------------

    def tick(self, now: float) -> float | None:
        """Fire due wills, expire sessions and QoS 2 ids awaiting PUBREL, publish ``$SYS``.

        Returns the next deadline.
        """
        for client_id, will in self.wills.pop_due(now):
            state = self.sessions.get(client_id)
            journal = None if state is None else durable(state)
            if journal is not None:
                journal.will_gone(client_id)
            self._publish_will(client_id, will, now)
        for state in self.sessions.pop_expired(now):
            log.info("session.expired", client_id=state.client_id)
            self._end_session(state, now)
        self.inbound.expire(now)
        backpressure = self.router.backpressure
        for client_id in backpressure.expire(now, self.sessions.get):
            log.info("backpressure.lagging", client_id=client_id, hold=backpressure.max_hold)
        if self.sys_topics.due(now):
            self._publish_sys(now)
        deadlines = [
            deadline
            for deadline in (
                self.wills.next_deadline(),
                self.sessions.next_deadline(),
                self.inbound.next_deadline(),
                self.router.backpressure.next_deadline(),
                self.sys_topics.next_deadline(),
            )
            if deadline is not None
        ]
        return min(deadlines, default=None)

    def _publish_sys(self, now: float) -> None:
        self.refresh_counts()
        for topic, value in self.sys_topics.collect(now):
            self.router.publish(Message(topic, value.encode(), 0, True), now)  # not stored

    def recheck_subscriptions(self, now: float) -> int:
        """After an ACL reload: drop every subscription the policy no longer allows."""
        return self.requests.recheck(now)

    def shutdown(self, now: float) -> None:
        """Server shutdown: connected clients' wills go out and links close. Without
        persistence every session ends (delayed wills go out too); with it, durable sessions
        and delayed wills stay in the store for the next start."""
        if self._stopped:
            return
        self._stopped = True
        keep = self.journal.enabled
        connections = [s.connection for s in self.sessions if s.connection is not None]
        for connection in connections:
            will, connection.will = connection.will, None
            if will is not None:
                self._publish_will(connection.client_id, will, now)
        if not keep:
            for client_id, will in self.wills.take_all():
                self._publish_will(client_id, will, now)
        for connection in connections:
            connection.open = False
            state = connection.state
            state.connection = None
            connection.link.close(ReasonCode.SERVER_SHUTTING_DOWN)
            journal = durable(state)
            if journal is not None:
                username = state.identity.username
                journal.session(state.client_id, state.expiry_interval, username, journal.wall(now))
        if not keep:
            for state in self.sessions:
                self.sessions.remove(state)
                self.subscriptions.remove_client(state.client_id)
        self.stats.clients_connected = 0
        self.refresh_counts()
        log.info("broker.shutdown", closed=len(connections))


__all__ = ["Broker", "ClientLink", "Session"]
