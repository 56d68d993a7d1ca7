"""What every security test does: log in as a user of the deployment, try a login and record
exactly how the broker answered (and how long it took), expect a connection to be cut, and keep
well-behaved bystanders exchanging messages to prove that an attack disturbed nobody else.

Reason codes are written out here once; ``refusal_311`` maps a v5 CONNACK refusal to 3.1.1.
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from support.brokerproc import Broker
from support.clients import Clients, unique
from support.pahoclient import V5, V311, PahoClient, PahoWill
from support.rawclient import (
    MQTT_5,
    ConnAck,
    ConnectionClosedError,
    Packet,
    PacketType,
    PropList,
    RawClient,
    Will,
    decode_connack,
    decode_disconnect,
    encode_connect,
)

from .deployment import BOB, PASSWORDS

# MQTT 5 reason codes (spec 2.4)
UNSPECIFIED: Final = 0x80
MALFORMED: Final = 0x81
CLIENT_ID_INVALID: Final = 0x85
BAD_CREDENTIALS: Final = 0x86
NOT_AUTHORIZED: Final = 0x87
SERVER_BUSY: Final = 0x89
BANNED: Final = 0x8A
PACKET_TOO_LARGE: Final = 0x95
RATE_TOO_HIGH: Final = 0x96
QUOTA_EXCEEDED: Final = 0x97
PAYLOAD_FORMAT_INVALID: Final = 0x99
CONNECTION_RATE_EXCEEDED: Final = 0x9F
# MQTT 3.1.1 CONNACK return codes (spec 3.2.2.3) and the SUBACK failure code
RC_ID_REJECTED: Final = 2
RC_UNAVAILABLE: Final = 3
RC_BAD_CREDENTIALS: Final = 4
RC_NOT_AUTHORIZED: Final = 5
SUBACK_FAILURE: Final = 0x80

_V311_EQUIVALENT: Final = {
    BAD_CREDENTIALS: RC_BAD_CREDENTIALS,
    NOT_AUTHORIZED: RC_NOT_AUTHORIZED,
    BANNED: RC_NOT_AUTHORIZED,
    CLIENT_ID_INVALID: RC_ID_REJECTED,
    SERVER_BUSY: RC_UNAVAILABLE,
    QUOTA_EXCEEDED: RC_UNAVAILABLE,
    CONNECTION_RATE_EXCEEDED: RC_UNAVAILABLE,
}

WAIT: Final = 5.0


def refusal(version: int, v5_code: int) -> int:
    """The CONNACK code a refused client of ``version`` gets for the v5 reason ``v5_code``."""
    return v5_code if version == MQTT_5 else _V311_EQUIVALENT[v5_code]


def topic_ns() -> str:
    """A fresh topic level, so tests on a shared broker (and its retained store) never meet."""
    return uuid.uuid4().hex[:10]


# ----------------------------------------------------------------- logging in


def connect_as(
    mqtt: Clients,
    broker: Broker,
    user: str,
    version: int = V5,
    *,
    client_id: str | None = None,
    will: PahoWill | None = None,
    source: str | None = None,
    clean: bool = True,
    tls: ssl.SSLContext | None = None,
) -> PahoClient:
    """A paho client logged in as ``user`` of the deployment (CONNACK success checked);
    with ``tls`` it connects to the broker's TLS listener."""
    return mqtt.paho(
        broker,
        version,
        username=user,
        password=PASSWORDS[user],
        client_id=client_id,
        will=will,
        source=source,
        clean=clean,
        tls=tls,
    )


def raw_as(
    mqtt: Clients,
    broker: Broker,
    user: str,
    version: int = MQTT_5,
    *,
    client_id: str | None = None,
    source: str | None = None,
    clean: bool = True,
    properties: PropList = (),
    will: Will | None = None,
) -> RawClient:
    """A raw client logged in as ``user`` (CONNACK success checked)."""
    raw = mqtt.raw(broker, version, source=source)
    raw.connect(
        unique(user) if client_id is None else client_id,
        username=user,
        password=PASSWORDS[user].encode(),
        clean=clean,
        properties=properties,
        will=will,
    )
    return raw


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    """How the broker answered one CONNECT."""

    connack: ConnAck | None  # None: the connection closed (or was reset) without a CONNACK
    packet: Packet | None  # the first packet received, to compare answers byte for byte
    elapsed: float  # seconds from sending CONNECT to the answer (or the close)
    closed: bool  # the broker closed the connection (after its answer, if any)
    client: RawClient | None  # the open connection when the login was accepted

    @property
    def accepted(self) -> bool:
        return self.connack is not None and self.connack.reason_code == 0

    @property
    def code(self) -> int | None:
        return None if self.connack is None else self.connack.reason_code

    def __str__(self) -> str:
        what = "closed without CONNACK" if self.connack is None else f"CONNACK {self.code:#04x}"
        state = "closed" if self.closed else "open"
        return f"{what} after {self.elapsed:.3f}s (connection {state})"


class PendingLogin:
    """A CONNECT that has been sent and whose answer has not been read yet."""

    def __init__(self, raw: RawClient | None, version: int, sent: bool, start: float) -> None:
        self.raw, self.version, self.sent, self.start = raw, version, sent, start

    def finish(self, timeout: float = 10.0) -> LoginOutcome:
        """Read the answer (CONNACK or close); a refusal must be followed by a close."""
        raw = self.raw
        packet: Packet | None = None
        if raw is not None and self.sent:
            try:
                packet = raw.recv(timeout)
            except ConnectionClosedError:
                packet = None
            except TimeoutError:
                raise AssertionError(f"no answer to CONNECT within {timeout}s") from None
        elapsed = time.monotonic() - self.start
        if raw is None or packet is None:
            return LoginOutcome(None, None, elapsed, True, None)
        assert packet.type == PacketType.CONNACK, (
            f"expected CONNACK, got {packet.name} {packet.body!r}"
        )
        connack = decode_connack(packet, self.version)
        if connack.reason_code == 0:
            return LoginOutcome(connack, packet, elapsed, False, raw)
        return LoginOutcome(connack, packet, elapsed, closed_by_broker(raw), None)


def start_login(
    mqtt: Clients,
    broker: Broker,
    version: int = MQTT_5,
    *,
    username: str | bytes | None = None,
    password: bytes | None = None,
    client_id: str | bytes | None = None,
    source: str | None = None,
    will: Will | None = None,
    properties: PropList = (),
    clean: bool = True,
    timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
) -> PendingLogin:
    """Open a connection and send one CONNECT, without waiting for the answer."""
    start = time.monotonic()
    try:
        raw = mqtt.raw(broker, version, timeout=timeout, source=source, tls=tls)
    except OSError:  # refused or reset before the connection was usable (TLS handshake too)
        return PendingLogin(None, version, False, start)
    if client_id is None:
        client_id = unique(username if isinstance(username, str) else "anon")
    sent = raw.try_send(
        encode_connect(
            client_id,
            version=version,
            clean=clean,
            username=username,
            password=password,
            will=will,
            properties=properties,
        )
    )
    return PendingLogin(raw, version, sent, start)


def try_login(
    mqtt: Clients,
    broker: Broker,
    version: int = MQTT_5,
    *,
    username: str | bytes | None = None,
    password: bytes | None = None,
    client_id: str | bytes | None = None,
    source: str | None = None,
    will: Will | None = None,
    properties: PropList = (),
    clean: bool = True,
    timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
) -> LoginOutcome:
    """Send one CONNECT and record the answer; a refusal must be followed by a close."""
    pending = start_login(
        mqtt,
        broker,
        version,
        username=username,
        password=password,
        client_id=client_id,
        source=source,
        will=will,
        properties=properties,
        clean=clean,
        timeout=timeout,
        tls=tls,
    )
    return pending.finish(timeout)


def closed_by_broker(raw: RawClient, timeout: float = WAIT) -> bool:
    """Whether the broker closes ``raw`` within ``timeout`` (whatever it sends first)."""
    try:
        raw.read_until_closed(timeout)
    except AssertionError:
        return False
    return True


# ----------------------------------------------------------------- being cut off


def assert_cut_off(raw: RawClient, codes: Collection[int], timeout: float = WAIT) -> list[Packet]:
    """The broker closes ``raw``; a v5 client may first get a DISCONNECT with one of ``codes``.

    PUBLISH/acknowledgement packets before the close are returned for the caller to judge;
    a CONNACK is allowed only as a refusal with one of ``codes`` (3.1.1: any non-zero code).
    """
    packets = raw.read_until_closed(timeout)
    others: list[Packet] = []
    for pkt in packets:
        if pkt.type == PacketType.DISCONNECT:
            assert raw.version == MQTT_5, f"3.1.1 has no server DISCONNECT: {packets}"
            reason = decode_disconnect(pkt, MQTT_5).reason_code
            assert reason in codes, f"DISCONNECT {reason:#04x}, expected one of {_hex(codes)}"
        elif pkt.type == PacketType.CONNACK:
            code = decode_connack(pkt, raw.version).reason_code
            if raw.version == MQTT_5:
                assert code in codes, f"CONNACK {code:#04x}, expected one of {_hex(codes)}"
            else:
                assert code != 0, "3.1.1 CONNACK accepted a malformed CONNECT"
        else:
            others.append(pkt)
    return others


def _hex(codes: Collection[int]) -> str:
    return "{" + ", ".join(f"{c:#04x}" for c in sorted(codes)) + "}"


# ----------------------------------------------------------------- bystanders


class Bystanders:
    """A 3.1.1 and a v5 paho client of user ``user`` that keep exchanging QoS 1 messages.

    They connect from their own loopback address (the test's, not the attacker's), so per-IP
    defences aimed at an attacker must leave them alone.
    """

    def __init__(
        self, mqtt: Clients, broker: Broker, user: str = BOB, *, source: str | None = None
    ) -> None:
        self.topic = f"sec/users/{user}/{topic_ns()}/bystanders"
        self.clients = [
            connect_as(mqtt, broker, user, V311, source=source),
            connect_as(mqtt, broker, user, V5, source=source),
        ]
        for client in self.clients:
            assert client.subscribe(self.topic, 1) == [1]
        self.rounds = 0

    def exchange(self, timeout: float = WAIT) -> None:
        """Each publishes one message and both receive both, each wait bounded by ``timeout``."""
        for client in self.clients:
            assert client.is_connected(), f"bystander {client.client_id} lost its connection"
            client.drain()  # leftovers of an earlier, failed exchange
        for sender in self.clients:
            self.rounds += 1
            payload = f"round {self.rounds}".encode()
            sender.publish(self.topic, payload, 1, timeout=timeout)
            for client in self.clients:
                message = client.expect(timeout)
                assert (message.topic, message.payload) == (self.topic, payload)
        for client in self.clients:
            assert client.is_connected() and client.disconnected_info() is None


def publish_sentinel(publisher: PahoClient, topic: str) -> tuple[str, bytes]:
    """Publish a unique, allowed QoS 1 message; a receiver must see it before anything else."""
    payload = unique("sentinel").encode()
    publisher.publish(topic, payload, 1)
    return topic, payload


def expect_first(client: PahoClient, topic: str, payload: bytes, timeout: float = WAIT) -> None:
    """The next message ``client`` gets is exactly this one (nothing slipped in before it)."""
    message = client.expect(timeout)
    assert (message.topic, message.payload) == (topic, payload), (
        f"{client.client_id} got {message.topic!r} {message.payload[:60]!r} before the sentinel "
        f"{topic!r}"
    )


__all__ = [
    "BAD_CREDENTIALS",
    "BANNED",
    "CLIENT_ID_INVALID",
    "CONNECTION_RATE_EXCEEDED",
    "MALFORMED",
    "NOT_AUTHORIZED",
    "PACKET_TOO_LARGE",
    "PAYLOAD_FORMAT_INVALID",
    "QUOTA_EXCEEDED",
    "RATE_TOO_HIGH",
    "RC_BAD_CREDENTIALS",
    "RC_ID_REJECTED",
    "RC_NOT_AUTHORIZED",
    "RC_UNAVAILABLE",
    "SERVER_BUSY",
    "SUBACK_FAILURE",
    "UNSPECIFIED",
    "WAIT",
    "Bystanders",
    "LoginOutcome",
    "PendingLogin",
    "assert_cut_off",
    "closed_by_broker",
    "connect_as",
    "expect_first",
    "publish_sentinel",
    "raw_as",
    "refusal",
    "start_login",
    "topic_ns",
    "try_login",
]
