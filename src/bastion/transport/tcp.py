"""asyncio TCP front for MQTT: owns sockets, timeouts and write batching.

Each accepted socket gets an ``MqttClientProtocol`` holding a sans-I/O ``MqttConnection``;
decoded packets go to the broker core, which answers through this object's ``ClientLink``
methods (``send``, ``close``, ``set_keep_alive``). Writes made while handling one chunk are
batched into a single ``transport.write`` at the end of the loop iteration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import structlog

from bastion.broker.core import Broker
from bastion.config.schema import MqttSettings
from bastion.mqtt.connection import MqttConnection, ProtocolViolation
from bastion.mqtt.packets import Connect, Disconnect, Packet, ProtocolVersion
from bastion.mqtt.reason_codes import ReasonCode

if TYPE_CHECKING:
    from bastion.broker.sessions import Session

log = structlog.get_logger("bastion.transport")

# Above this many buffered outgoing bytes a client counts as slow: its QoS 0 messages are
# dropped instead of buffered without bound (QoS 1/2 wait in the session's window).
SLOW_CLIENT_BUFFER = 4 * 1024 * 1024


class MqttClientProtocol(asyncio.Protocol):
    """One client connection: the bridge between a socket and the broker core."""

    def __init__(self, broker: Broker, settings: MqttSettings, registry: ConnectionRegistry):
        self._broker = broker
        self._settings = settings
        self._registry = registry
        self._conn = MqttConnection(
            max_packet_size=settings.max_packet_size,
            receive_maximum=settings.receive_maximum,
            topic_alias_maximum=settings.topic_alias_maximum,
            assign_topic_aliases=settings.server_assigns_topic_aliases,
        )
        self._transport: asyncio.Transport | None = None
        self._session: Session | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._closing = False
        self.peer = "unknown"
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
            host = str(peername[0])
            self.peer = f"[{host}]:{peername[1]}" if ":" in host else f"{host}:{peername[1]}"
        self._registry.add(self)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.last_received = now
        self._broker.stats.bytes_received += len(data)
        for event in self._conn.receive_data(data):
            if isinstance(event, ProtocolViolation):
                self._on_violation(event)
                return
            self._dispatch(event, now)
            if self._closing:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.discard(self)
        self._closing = True
        session, self._session = self._session, None
        if session is not None:
            self._broker.connection_lost(session, time.monotonic())

    # -------------------------------------------------------------- dispatching

    def _dispatch(self, packet: Packet, now: float) -> None:
        if self._session is not None:
            self._broker.receive(self._session, packet, now)
            return
        assert isinstance(packet, Connect)  # the connection guarantees CONNECT comes first
        self.protocol_version = packet.protocol_version
        self._session = self._broker.connect(self, packet, now)

    def _on_violation(self, violation: ProtocolViolation) -> None:
        log.info(
            "protocol.violation",
            peer=self.peer,
            reason=f"0x{violation.reason:02X}",
            detail=violation.message,
        )
        response = self._conn.violation_response(violation)
        if response:
            self._write(response)
        self._shutdown_transport()

    # ------------------------------------------------------- ClientLink methods

    def send(self, packet: Packet) -> bool:
        """Encode and queue ``packet``; False if it exceeds the client's size limit."""
        if self._closing:
            return True  # the connection is going away; the session keeps the state
        data = self._conn.send(packet)
        if data is None:
            return False
        self._write(data)
        return True

    def close(self, reason_code: int | None = None) -> None:
        """Close the connection, first sending DISCONNECT(reason) to an MQTT 5 client."""
        if self._closing:
            return
        if reason_code is not None and self.protocol_version == ProtocolVersion.MQTT_5:
            data = self._conn.send(Disconnect(reason_code=reason_code))
            if data:
                self._write(data)
        self._shutdown_transport()

    def set_keep_alive(self, seconds: int) -> None:
        self.keep_alive = seconds

    # --------------------------------------------------------------- internals

    @property
    def is_slow(self) -> bool:
        transport = self._transport
        return transport is not None and transport.get_write_buffer_size() > SLOW_CLIENT_BUFFER

    def _write(self, data: bytes) -> None:
        self._broker.stats.bytes_sent += len(data)
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self._transport
        if not self._out or transport is None or transport.is_closing():
            self._out.clear()
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        transport.write(data)

    def _shutdown_transport(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def abort_quietly(self) -> None:
        """Close without a DISCONNECT (server shutdown of a connection with no session)."""
        self._shutdown_transport()

    def check_timeouts(self, now: float) -> None:
        """Enforce the CONNECT deadline and keep alive (1.5 x the negotiated interval)."""
        if self._closing:
            return
        if self._session is None:
            if now - self.opened_at > self._settings.connect_timeout:
                log.info("connect.timeout", peer=self.peer)
                self._shutdown_transport()
            return
        if self.keep_alive and now - self.last_received > 1.5 * self.keep_alive:
            log.info("keepalive.timeout", peer=self.peer, keep_alive=self.keep_alive)
            self.close(ReasonCode.KEEP_ALIVE_TIMEOUT)


class ConnectionRegistry:
    """The live client connections of a server, for timeouts and shutdown."""

    def __init__(self) -> None:
        self._live: set[MqttClientProtocol] = set()

    def add(self, protocol: MqttClientProtocol) -> None:
        self._live.add(protocol)

    def discard(self, protocol: MqttClientProtocol) -> None:
        self._live.discard(protocol)

    def __len__(self) -> int:
        return len(self._live)

    def check_timeouts(self, now: float) -> None:
        for protocol in list(self._live):
            protocol.check_timeouts(now)

    def close_all(self) -> None:
        """Close every connection still open (after the broker said goodbye to its clients)."""
        for protocol in list(self._live):
            protocol.abort_quietly()


def protocol_factory(
    broker: Broker, settings: MqttSettings, registry: ConnectionRegistry
) -> Callable[[], MqttClientProtocol]:
    """The factory ``loop.create_server`` calls for each accepted socket."""

    def factory() -> MqttClientProtocol:
        return MqttClientProtocol(broker, settings, registry)

    return factory


__all__ = ["ConnectionRegistry", "MqttClientProtocol", "protocol_factory"]
