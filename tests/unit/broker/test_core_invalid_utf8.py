"""The invalid-UTF-8 attack end to end, without sockets: bytes -> MqttConnection -> Broker.

The transport's job in miniature (``Wire``): feed bytes to the connection, hand packets to
the broker, and on a violation answer, report it with ``Broker.protocol_violation`` and end
the connection. The attacker is disconnected, its message reaches nobody, the event is
counted and reported, and a well-behaved client on the same broker keeps working.
"""

from __future__ import annotations

from brokerkit import FakeLink, Harness

from bastion.broker.securitylog import peer_ip
from bastion.broker.sessions import Session
from bastion.mqtt import codec
from bastion.mqtt.connection import MqttConnection, ProtocolViolation
from bastion.mqtt.packets import Connect, Disconnect, Packet, Publish, Will
from bastion.mqtt.reason_codes import ReasonCode
from bastion.security.audit import SecurityEventKind


class Wire:
    """One client connection the way ``transport/tcp.py`` drives it."""

    def __init__(self, h: Harness, version: int = 5, peer: str = "10.1.2.3:4567") -> None:
        self.h = h
        self.version = version
        self.conn = MqttConnection()
        self.link = FakeLink(protocol_version=version, peer=peer)
        self.session: Session | None = None
        self.answer = b""

    def send(self, *packets: Packet, raw: bytes = b"") -> None:
        data = b"".join(codec.encode(p, self.version) for p in packets) + raw
        broker = self.h.broker
        for event in self.conn.receive_data(data):
            if isinstance(event, ProtocolViolation):
                broker.protocol_violation(self.session, self.link.peer, event, self.h.now)
                self.answer = self.conn.violation_response(event)
                self.link.close(None)
                if self.session is not None:
                    broker.connection_lost(self.session, self.h.now)
                return
            if self.session is None:
                assert isinstance(event, Connect)
                self.session = broker.connect(self.link, event, self.h.now)
            else:
                broker.receive(self.session, event, self.h.now)


def _bad_topic_publish(version: int) -> bytes:
    data = codec.encode(Publish("sensors/~~~", b"payload", qos=2, packet_id=1), version)
    return data.replace(b"~~~", b"\xed\xa0\x80")  # an encoded surrogate: not UTF-8


def test_invalid_utf8_topic_never_reaches_subscribers() -> None:
    h = Harness()
    subscriber = h.connect("dashboard")
    subscriber.subscribe("#", qos=2)
    attacker = Wire(h)
    attacker.send(Connect(5, "attacker", will=Will("status/attacker", b"offline")))
    assert attacker.session is not None
    attacker.send(Publish("sensors/ok", b"fine"), raw=_bad_topic_publish(5))
    assert [(m.topic, m.payload) for m in subscriber.take_publishes()] == [
        ("sensors/ok", b"fine"),
        ("status/attacker", b"offline"),  # a broken connection publishes the will
    ]
    assert attacker.answer == codec.encode(Disconnect(ReasonCode.MALFORMED_PACKET), 5)
    assert h.stats.invalid_utf8 == 1
    [event] = h.events.events
    assert event.kind is SecurityEventKind.INVALID_UTF8
    assert (event.client_id, event.ip, event.reason_code) == ("attacker", "10.1.2.3", 0x81)
    # Everyone else carries on.
    other = h.connect("sensor")
    other.publish("sensors/temp", b"21.5", qos=1)
    assert [m.payload for m in subscriber.take_publishes()] == [b"21.5"]


def test_invalid_utf8_in_connect_is_reported_by_address() -> None:
    h = Harness()
    attacker = Wire(h, peer="[2001:db8::7]:1883")
    data = codec.encode(Connect(5, "~~"), 5).replace(b"~~", b"\xc0\xaf")
    attacker.send(raw=data)
    assert attacker.session is None
    assert attacker.answer[:1] == b"\x20"  # CONNACK 0x81
    [event] = h.events.events
    assert (event.kind, event.client_id, event.ip) == (
        SecurityEventKind.INVALID_UTF8,
        None,
        "2001:db8::7",
    )


def test_v311_attacker_is_closed_without_an_answer() -> None:
    h = Harness()
    attacker = Wire(h, version=4)
    attacker.send(Connect(4, "old"), raw=_bad_topic_publish(4))
    assert attacker.answer == b""
    assert attacker.link.closed
    assert h.stats.invalid_utf8 == 1


def test_other_violations_count_as_protocol_violations() -> None:
    h = Harness()
    attacker = Wire(h)
    attacker.send(Connect(5, "a"), raw=b"\x30\x01\x00")
    assert (h.stats.invalid_utf8, h.stats.protocol_violations) == (0, 1)
    assert h.events.events[0].kind is SecurityEventKind.PROTOCOL_VIOLATION


def test_peer_ip() -> None:
    assert peer_ip("10.0.0.1:1883") == "10.0.0.1"
    assert peer_ip("[::1]:1883") == "::1"
    assert peer_ip("unknown") == "unknown"
