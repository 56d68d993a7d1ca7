"""asyncio TCP/TLS front for MQTT: owns sockets, timeouts, write batching and admission.

Each accepted socket gets an ``MqttClientProtocol`` holding a sans-I/O ``MqttConnection``;
decoded packets go to the broker core, which answers through this object's ``ClientLink``
methods (``send``, ``close``, ``set_keep_alive``). Before the core sees a client, the
front applies the connection gate and bans, and checks credentials off the event loop (or
runs an MQTT 5 enhanced authentication exchange, ``authexchange.py``) with brute-force
back-off; after, it meters PUBLISH against the client's rate budget.

TLS runs here too (``tlslayer.py``), not in asyncio: the gate and bans are applied before
any handshake work, and a failed handshake is reported as a security event with the peer's
address (asyncio drops those silently).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, cast

import structlog

from bastion.mqtt.connection import Event, MqttConnection, ProtocolViolation
from bastion.mqtt.packets import Connect, Disconnect, Packet, ProtocolVersion, Publish
from bastion.mqtt.reason_codes import ReasonCode
from bastion.security.audit import SecurityEvent, SecurityEventKind
from bastion.security.enhanced_auth import Failure
from bastion.security.limits import ClientRateLimiter, RateVerdict
from bastion.security.policy import AuthResult
from bastion.security.tls import identity_from_peer_cert
from bastion.transport.authexchange import run_exchange
from bastion.transport.front import ConnectionRegistry, Front, ListenerInfo
from bastion.transport.tlslayer import TlsError, TlsHandshakeError, TlsSession

if TYPE_CHECKING:
    from bastion.broker.sessions import Session

log = structlog.get_logger("bastion.transport")

# Above this many buffered outgoing bytes a client counts as slow: QoS 0 messages for it
# are dropped (and counted) instead of growing the buffer without bound; QoS 1/2 wait in
# the session's bounded window and queue.
SLOW_CLIENT_BUFFER = 4 * 1024 * 1024

# Outgoing bytes are gathered and written once per event-loop turn, or as soon as this many
# are waiting: a turn that reads many publishers must not hold a subscriber's data back.
FLUSH_AT = 64 * 1024


# Every connection reads into this one buffer (the event loop is single-threaded and each
# read is consumed before the next starts), so an idle connection holds no read buffer,
# and a read is at most this big, so one busy publisher cannot make a loop turn long.
READ_SIZE = 16 * 1024
_READ_BUFFER = bytearray(READ_SIZE)
_READ_VIEW = memoryview(_READ_BUFFER)


class MqttClientProtocol(asyncio.BufferedProtocol):
    """One client connection: the bridge between a socket and the broker core."""

    __slots__ = (
        "_admitted",
        "_auth_waiter",
        "_backpressured",
        "_broker",
        "_certificate_identity",
        "_claimed_username",
        "_closing",
        "_conn",
        "_connect_seen",
        "_flush_scheduled",
        "_front",
        "_held",
        "_limiter",
        "_listener",
        "_lost",
        "_out",
        "_out_size",
        "_paused",
        "_resume_handle",
        "_session",
        "_slow",
        "_tls",
        "_transport",
        "ip",
        "keep_alive",
        "last_received",
        "opened_at",
        "peer",
        "protocol_version",
    )

    def __init__(self, front: Front, listener: ListenerInfo) -> None:
        self._front = front
        self._broker = front.broker
        self._listener = listener
        settings = front.settings
        self._conn = MqttConnection(
            max_packet_size=settings.max_packet_size,
            receive_maximum=settings.receive_maximum,
            topic_alias_maximum=settings.topic_alias_maximum,
            assign_topic_aliases=settings.server_assigns_topic_aliases,
        )
        self._transport: asyncio.Transport | None = None
        self._session: Session | None = None
        self._limiter: ClientRateLimiter | None = None
        self._out: list[bytes] = []
        self._out_size = 0
        self._held: list[Event] = []  # events that arrived while CONNECT was being checked
        # Enhanced authentication: the exchange waiting for the client's next packet, and
        # the username the client claims (for bans, back-off and audit before it is verified).
        self._auth_waiter: asyncio.Future[Event | None] | None = None
        self._claimed_username: str | None = None
        self._flush_scheduled = False
        self._closing = False
        self._admitted = False  # counted by the connection gate (release on close)
        self._connect_seen = False
        self._paused = False
        self._backpressured = False  # held by the broker until a subscriber catches up
        self._slow = False
        self._resume_handle: asyncio.TimerHandle | None = None
        self._lost = False
        self._certificate_identity: str | None = None
        self._tls: TlsSession | None = None  # set once the gate admits a TLS connection
        self.peer = "unknown"
        self.ip = "unknown"
        self.protocol_version: int = ProtocolVersion.MQTT_3_1_1
        self.keep_alive = 0
        self.opened_at = time.monotonic()
        self.last_received = self.opened_at

    # ------------------------------------------------------------ asyncio hooks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and len(peername) >= 2:
            self.ip = str(peername[0])
            self.peer = (
                f"[{self.ip}]:{peername[1]}" if ":" in self.ip else f"{self.ip}:{peername[1]}"
            )
        self._front.registry.add(self)
        now = time.monotonic()
        defences = self._front.defences
        ban = defences.bans.is_banned(ip=self.ip, now=now)
        if ban is not None:
            self._report(SecurityEventKind.CONNECTION_REFUSED, f"source banned: {ban.reason}", now)
            self._shutdown_transport()
            return
        decision = defences.gate.admit(self.ip, now)
        if not decision.admitted:
            refusal = decision.refusal
            detail = refusal.name.lower() if refusal is not None else "refused"
            self._report(SecurityEventKind.CONNECTION_REFUSED, detail, now)
            self._shutdown_transport()
            return
        self._admitted = True
        context = self._listener.tls_context
        if context is not None:
            try:
                self._tls = TlsSession(context, server_side=True)
            except ssl.SSLError as exc:  # a context that cannot start a session: refuse
                log.error("tls.session_failed", peer=self.peer, error=str(exc))
                self._shutdown_transport()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_READ_VIEW[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """Bytes from the socket (``data`` is only valid during the call: it is copied)."""
        if self._closing:
            return
        now = time.monotonic()
        self.last_received = now
        self._broker.stats.bytes_received += len(data)
        tls = self._tls
        if tls is not None:
            was_done = tls.handshake_done
            try:
                data = tls.receive(data)
            except TlsHandshakeError as exc:
                self._on_handshake_failed(exc, now)
                return
            except TlsError as exc:
                log.info("tls.failed", peer=self.peer, detail=exc.detail)
                self._tls_failed()
                return
            if not was_done and tls.handshake_done:
                self._on_handshake_done(tls)
            self._send_tls_output()  # handshake records, tickets, key update answers
            if data:
                self._handle_events(self._conn.receive_data(data), now)
            if tls.peer_closed:
                self._shutdown_transport()  # close_notify: the client's end of stream
        else:
            self._handle_events(self._conn.receive_data(data), now)
        self._front.flusher.flush()  # what this read caused goes out now

    # --------------------------------------------------------------------- TLS

    def _on_handshake_done(self, tls: TlsSession) -> None:
        log.debug("tls.established", peer=self.peer, version=tls.version(), cipher=tls.cipher())
        if self._listener.identity_mode != "none":
            self._certificate_identity = identity_from_peer_cert(
                tls.peer_certificate(),
                self._listener.identity_mode,  # type: ignore[arg-type]
            )

    def _on_handshake_failed(self, exc: TlsHandshakeError, now: float) -> None:
        kind = (
            SecurityEventKind.CERTIFICATE_REJECTED
            if exc.certificate
            else SecurityEventKind.TLS_HANDSHAKE_FAILED
        )
        log.info("tls.handshake_failed", peer=self.peer, detail=exc.detail)
        self._report(kind, exc.detail, now)
        self._tls_failed()

    def _tls_failed(self) -> None:
        """Write the alert the session produced, then close (no close_notify)."""
        self._out.clear()
        self._send_tls_output()
        self._shutdown_transport()

    def _send_tls_output(self) -> None:
        tls = self._tls
        transport = self._transport
        if tls is None or transport is None or transport.is_closing():
            return
        output = tls.pending_output()
        if output:
            transport.write(output)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._front.registry.discard(self)
        self._closing = True
        self._wake_auth_waiter()
        if self._admitted:
            self._admitted = False
            self._front.defences.gate.release(self.ip)
        session, self._session = self._session, None
        if session is not None:
            self._broker.connection_lost(session, time.monotonic())

    # -------------------------------------------------------------- dispatching

    def _handle_events(self, events: list[Event], now: float) -> None:
        metered = self._meter_batch(events, now)
        for index, event in enumerate(events):
            if self._closing:
                return
            if isinstance(event, ProtocolViolation):
                self._on_violation(event, now)
                return
            if self._session is None:
                if self._connect_seen:  # admission under way: an exchange may be waiting
                    self._during_admission(event)
                    continue
                assert isinstance(event, Connect)  # the connection guarantees CONNECT first
                self._held = list(events[index + 1 :])
                self._start_admission(event)
                return
            if not metered and isinstance(event, Publish) and not self._meter(event, now):
                return
            self._broker.receive(self._session, event, now)
            if self._paused:
                # Over budget: the rest of this chunk waits for the pause to end, so a
                # flooder's backlog is handled a budget at a time, never in one long burst.
                self._held = list(events[index + 1 :])
                return

    def _meter_batch(self, events: list[Event], now: float) -> bool:
        """Charge every PUBLISH of one read at once when the budget covers them all."""
        limiter = self._limiter
        if limiter is None or self._session is None:
            return limiter is None
        count = size = 0
        for event in events:
            if type(event) is Publish:
                count += 1
                size += len(event.payload)
        return count > 0 and limiter.take_batch(now, count, size)

    def _meter(self, packet: Publish, now: float) -> bool:
        """Charge a PUBLISH to the client's budget; False if the client was disconnected."""
        limiter = self._limiter
        if limiter is None:
            return True
        decision = limiter.check_publish(now, len(packet.payload))
        if decision.verdict is RateVerdict.ALLOW:
            return True
        reason = int(decision.reason) if decision.reason is not None else None
        self._report(
            SecurityEventKind.RATE_LIMITED,
            decision.verdict.value,
            now,
            reason=reason,
            topic=packet.topic,
        )
        if decision.verdict is RateVerdict.EXCEED:
            self.close(reason if reason is not None else ReasonCode.MESSAGE_RATE_TOO_HIGH)
            return False
        self._pause_for(decision.delay)
        return True

    def _pause_for(self, delay: float) -> None:
        """Stop reading for ``delay`` seconds; a longer debt extends a pause already running."""
        transport = self._transport
        if transport is None or delay <= 0:
            return
        loop = asyncio.get_running_loop()
        resume_at = loop.time() + delay
        if self._paused:
            if self._resume_handle is None or resume_at <= self._resume_handle.when():
                return
            self._resume_handle.cancel()
        else:
            self._paused = True
            transport.pause_reading()
        self._resume_handle = loop.call_at(resume_at, self._resume)

    def _resume(self) -> None:
        self._paused = False
        self._resume_handle = None
        if self._closing or self._transport is None:
            return
        now = time.monotonic()
        self.last_received = now  # time spent paused is ours, not the client's
        held, self._held = self._held, []
        if held:
            self._handle_events(held, now)
        if not self._paused and not self._closing and not self._backpressured:
            self._transport.resume_reading()

    # ---------------------------------------------------------------- admission

    def _start_admission(self, packet: Connect) -> None:
        self._connect_seen = True
        self.protocol_version = packet.protocol_version
        if self._transport is not None:
            self._transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._admit(packet))
        self._front.registry.track(task)

    async def _admit(self, packet: Connect) -> None:
        try:
            result = await self._authenticate(packet)
            if self._closing:
                return
            now = time.monotonic()
            self._session = self._broker.connect(
                self, packet, now, auth=result, listener_max_qos=self._listener.max_qos
            )
            if self._session is None or result.identity is None:
                return
            profile = self._front.defences.profile_for(result.identity.username)
            self._limiter = ClientRateLimiter(profile)
            held, self._held = self._held, []
            self._handle_events(held, now)
            if (
                not self._closing
                and self._transport is not None
                and not self._paused
                and not self._backpressured
            ):
                self._transport.resume_reading()
        except Exception:  # never let one client's admission take the loop down
            log.exception("connect.failed", peer=self.peer)
            self._shutdown_transport()

    async def _authenticate(self, packet: Connect) -> AuthResult:
        """Bans, reconnect storms, credentials and brute-force back-off, in that order."""
        front = self._front
        defences = front.defences
        now = time.monotonic()
        username = packet.username
        ban = defences.bans.is_banned(
            ip=self.ip, username=username, client_id=packet.client_id or None, now=now
        )
        if ban is None:
            for new_ban in defences.flaps.record_connect(packet.client_id or None, self.ip, now):
                front.report(SecurityEvent.from_ban(new_ban), now)
                ban = new_ban
        if ban is not None:
            self._report(
                SecurityEventKind.BANNED, ban.reason, now, reason=ReasonCode.BANNED, connect=packet
            )
            return AuthResult(ReasonCode.BANNED, message="banned for a while")
        wait = defences.auth_failures.connack_delay(self.ip, username, now)
        result = await self._check_credentials(packet)
        now = time.monotonic()
        if self._claimed_username is not None and self._claimed_username != username:
            username = self._claimed_username  # enhanced authentication named the user
            wait = max(wait, defences.auth_failures.connack_delay(self.ip, username, now))
        if result.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID:
            # Right credentials, someone else's client id (a takeover attempt, or a device
            # set up wrongly): refused and reported, but no password failure to ban for.
            self._report(
                SecurityEventKind.CLIENT_ID_DENIED,
                result.message,
                now,
                reason=result.reason_code,
                connect=packet,
            )
        elif result.reason_code:
            outcome = defences.auth_failures.record_failure(self.ip, username, now)
            self._report(
                SecurityEventKind.AUTH_FAILURE,
                result.message,
                now,
                reason=result.reason_code,
                connect=packet,
            )
            for new_ban in outcome.new_bans:
                front.report(SecurityEvent.from_ban(new_ban), now)
            wait = max(wait, outcome.delay)
        else:
            defences.auth_failures.record_success(self.ip, username)
        if wait > 0 and not self._closing:
            await asyncio.sleep(wait)
        return result

    async def _check_credentials(self, packet: Connect) -> AuthResult:
        method = packet.properties.authentication_method
        if method is not None and packet.protocol_version >= ProtocolVersion.MQTT_5:
            return await self._enhanced_auth(packet, method)
        front = self._front
        args = (packet.client_id, packet.username, packet.password, self.peer)
        identity = self._certificate_identity
        slow = packet.username is not None and front.policy.passwords is not None
        if not slow or front.executor is None or identity is not None:
            return front.policy.authenticate(*args, certificate_identity=identity)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(front.executor, front.policy.authenticate, *args)

    async def _enhanced_auth(self, packet: Connect, name: str) -> AuthResult:
        """Run the method's AUTH exchange (§4.12); unknown methods are refused with 0x8C.

        Re-authentication after CONNACK is not offered (``Broker.receive`` answers AUTH 0x19
        with DISCONNECT 0x8C). A client that leaves or stays silent past ``connect_timeout``
        is closed without CONNACK and counted as a failed attempt.
        """
        front = self._front
        method = front.policy.enhanced_auth_methods.get(name)
        if method is None:
            return AuthResult(
                ReasonCode.BAD_AUTHENTICATION_METHOD,
                message=f"authentication method {name!r} is not supported",
            )
        outcome = await run_exchange(
            method,
            packet,
            self,
            timeout=front.settings.connect_timeout,
            clock=time.monotonic,
            check_claim=self._check_claim,
        )
        self._claimed_username = outcome.claimed_username
        step = outcome.step
        if step is None:
            log.info("auth.abandoned", peer=self.peer, method=name, detail=outcome.detail)
            self._shutdown_transport()
            return AuthResult(ReasonCode.NOT_AUTHORIZED, message=outcome.detail, auth_method=name)
        if isinstance(step, Failure):
            return AuthResult(step.reason_code, message=step.message, auth_method=name)
        result = front.policy.authenticated(
            packet.client_id,
            step.username,
            self.peer,
            connect_username=packet.username,
            certificate_identity=self._certificate_identity,
        )
        return replace(result, auth_method=name, auth_data=step.data)

    def _check_claim(self, username: str) -> Failure | None:
        """A claimed username that is banned ends the exchange before any proof is checked."""
        ban = self._front.defences.bans.is_banned(username=username, now=time.monotonic())
        if ban is None:
            return None
        return Failure(ReasonCode.BANNED, "banned for a while", username)

    async def receive(self, timeout: float) -> Packet | None:
        """``AuthChannel``: the client's next packet during an exchange (None: closed or late)."""
        if self._held:
            held = self._held.pop(0)
            if isinstance(held, ProtocolViolation):
                self._on_violation(held, time.monotonic())
                return None
            return held
        transport = self._transport
        if self._closing or transport is None:
            return None
        waiter: asyncio.Future[Event | None] = asyncio.get_running_loop().create_future()
        self._auth_waiter = waiter
        transport.resume_reading()
        try:
            event = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            event = None
            if not self._closing:
                transport.pause_reading()  # a packet pauses it in ``_during_admission``
        finally:
            self._auth_waiter = None
        if isinstance(event, ProtocolViolation):
            self._on_violation(event, time.monotonic())
            return None
        return event

    def _during_admission(self, event: Event) -> None:
        """A packet that arrived after CONNECT, before CONNACK: to the exchange, or held."""
        waiter = self._auth_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(event)
            if self._transport is not None:
                self._transport.pause_reading()  # the rest of this read waits in ``_held``
        else:
            self._held.append(event)

    def _wake_auth_waiter(self) -> None:
        waiter = self._auth_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --------------------------------------------------------------- reporting

    def _report(
        self,
        kind: SecurityEventKind,
        detail: str,
        now: float,
        *,
        reason: int | None = None,
        topic: str | None = None,
        connect: Connect | None = None,
    ) -> None:
        username = None
        client_id = None
        if connect is not None:
            username, client_id = connect.username, connect.client_id
            username = username if username is not None else self._claimed_username
        elif self._session is not None:
            client_id = self._session.client_id
        event = SecurityEvent(kind, detail, client_id, username, self.ip, reason, topic)
        self._front.report(event, now)

    def _on_violation(self, violation: ProtocolViolation, now: float) -> None:
        log.info(
            "protocol.violation",
            peer=self.peer,
            reason=f"0x{violation.reason:02X}",
            detail=violation.message,
        )
        # The core counts it and reports the security event (typed: invalid UTF-8 or not).
        self._broker.protocol_violation(self._session, self.peer, violation, now)
        response = self._conn.violation_response(violation)
        if response:
            self._write(response)
        self._shutdown_transport()

    # ------------------------------------------------------- ClientLink methods

    def send(self, packet: Packet) -> bool:
        """Encode and queue ``packet``; False if it exceeds the client's size limit."""
        if self._closing:
            return True  # the connection is going away; the session keeps the state
        if self._slow and self._drop_for_slowness(packet):
            return False
        data = self._conn.send(packet)
        if data is None:
            return False
        self._write(data)
        return True

    def _drop_for_slowness(self, packet: Packet) -> bool:
        """True if ``packet`` is QoS 0 and the client is still too far behind to get it."""
        if not self.is_slow:
            self._slow = False
            log.info("client.caught_up", peer=self.peer)
            return False
        return isinstance(packet, Publish) and packet.qos == 0

    def _check_slow(self, transport: asyncio.Transport) -> None:
        """After a write: note (and log, once per episode) a client that stopped keeping up."""
        if transport.get_write_buffer_size() > SLOW_CLIENT_BUFFER:
            self._slow = True
            log.info("client.slow", peer=self.peer)

    def close(self, reason_code: int | None = None) -> None:
        """Close the connection, first sending DISCONNECT(reason) to an MQTT 5 client."""
        if self._closing:
            return
        if (
            reason_code is not None
            and self.protocol_version == ProtocolVersion.MQTT_5
            and self._session is not None
        ):
            data = self._conn.send(Disconnect(reason_code=reason_code))
            if data:
                self._write(data)
        self._shutdown_transport()

    def set_keep_alive(self, seconds: int) -> None:
        self.keep_alive = seconds

    def pause_reading(self) -> None:
        """The broker holds this publisher (backpressure): read nothing until released."""
        if self._backpressured:
            return
        self._backpressured = True
        transport = self._transport
        if transport is not None and not self._closing and not self._paused:
            transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._backpressured:
            return
        self._backpressured = False
        self.last_received = time.monotonic()  # time spent held is ours, not the client's
        transport = self._transport
        if transport is not None and not self._closing and not self._paused:
            transport.resume_reading()

    # --------------------------------------------------------------- internals

    @property
    def is_slow(self) -> bool:
        transport = self._transport
        return transport is not None and transport.get_write_buffer_size() > SLOW_CLIENT_BUFFER

    def _write(self, data: bytes) -> None:
        self._broker.stats.bytes_sent += len(data)
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= FLUSH_AT:
            self.flush()  # a big batch goes now: the socket drains while we work on
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._front.flusher.add(self)

    def flush(self) -> None:
        """Write out what was queued (one write, or one TLS batch)."""
        self._flush_scheduled = False
        out = self._out
        self._out_size = 0
        transport = self._transport
        if not out or transport is None or transport.is_closing():
            out.clear()
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        tls = self._tls
        if tls is None:
            transport.write(data)
        else:
            try:
                tls.send(data)  # the whole batch in one go: as few records as possible
            except TlsError as exc:
                log.info("tls.failed", peer=self.peer, detail=exc.detail)
            self._send_tls_output()
        if not self._slow:
            self._check_slow(transport)

    def _shutdown_transport(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._wake_auth_waiter()
        self.flush()
        transport = self._transport
        if transport is None:
            return
        tls = self._tls
        if tls is not None and not transport.is_closing():
            goodbye = tls.close()  # close_notify after a completed handshake
            if goodbye:
                transport.write(goodbye)
        transport.close()

    def abort_quietly(self) -> None:
        """Close without a DISCONNECT (server shutdown of a connection with no session)."""
        self._shutdown_transport()

    def check_timeouts(self, now: float) -> None:
        """Enforce the CONNECT deadline and keep alive (1.5 x the negotiated interval)."""
        if self._closing:
            return
        if self._session is None:
            tls = self._tls
            if tls is not None and not tls.handshake_done:
                limit = self._listener.handshake_timeout
                if limit is None:
                    limit = self._front.settings.connect_timeout
                if now - self.opened_at > limit:
                    log.info("tls.handshake_timeout", peer=self.peer)
                    self._report(
                        SecurityEventKind.TLS_HANDSHAKE_FAILED, "no TLS handshake in time", now
                    )
                    self._shutdown_transport()
                    return
            if (
                not self._connect_seen
                and now - self.opened_at > self._front.settings.connect_timeout
            ):
                log.info("connect.timeout", peer=self.peer)
                self._report(SecurityEventKind.CONNECT_TIMEOUT, "no CONNECT in time", now)
                self._shutdown_transport()
            return
        if self._paused or self._backpressured:
            return
        if self.keep_alive and now - self.last_received > 1.5 * self.keep_alive:
            log.info("keepalive.timeout", peer=self.peer, keep_alive=self.keep_alive)
            self.close(ReasonCode.KEEP_ALIVE_TIMEOUT)


def protocol_factory(front: Front, listener: ListenerInfo) -> Callable[[], MqttClientProtocol]:
    """The factory ``loop.create_server`` calls for each accepted socket."""

    def factory() -> MqttClientProtocol:
        return MqttClientProtocol(front, listener)

    return factory


__all__ = ["ConnectionRegistry", "Front", "ListenerInfo", "MqttClientProtocol", "protocol_factory"]
