"""04 validation: invalid UTF-8 in every MQTT string field — client id, username, will topic
and will properties, CONNECT user property, topic name, PUBLISH user property, content type,
response topic, subscription filter — gets the offender cut off (v5: CONNACK/DISCONNECT 0x81
Malformed Packet, or 0x80; 3.1.1: the connection just closes) and is never forwarded.

This is the chapter's "UTF-8 validation DoS": a broker that forwards an invalid topic makes
every paho subscriber drop its connection. Two paho subscribers (v5 and 3.1.1, the admin)
watch the offender's namespace; after each attack an allowed sentinel must be the first thing
they receive, and they must still be connected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import pytest

from support.brokerproc import Broker, bastion_only
from support.clients import Clients, loopback_address, unique
from support.pahoclient import V5, V311, PahoClient
from support.rawclient import (
    MQTT_5,
    MQTT_311,
    PacketType,
    Prop,
    PropList,
    RawClient,
    Will,
    decode_ack,
    decode_disconnect,
    encode_connect,
    encode_publish,
    encode_subscribe,
)

from .deployment import ADMIN, ALICE, PASSWORDS
from .harness import (
    MALFORMED,
    PAYLOAD_FORMAT_INVALID,
    UNSPECIFIED,
    assert_cut_off,
    connect_as,
    expect_first,
    publish_sentinel,
    raw_as,
)

pytestmark = pytest.mark.security

BAD_UTF8: Final = {
    "byte-0xFF": b"\xff",
    "overlong-slash": b"\xc0\xaf",
    "surrogate-D800": b"\xed\xa0\x80",
    "U+0000": b"\x00",
}
CUT_OFF_CODES: Final = (MALFORMED, UNSPECIFIED)


@dataclass(frozen=True, slots=True)
class Attack:
    """How to smuggle ``bad`` bytes into one string field: a CONNECT, or a packet after login."""

    connect: Callable[[int, str, bytes], bytes] | None = None
    after_login: Callable[[int, str, bytes], bytes] | None = None


def _connect(
    version: int,
    *,
    client_id: bytes | None = None,
    username: bytes | None = None,
    will: Will | None = None,
    properties: PropList = (),
) -> bytes:
    return encode_connect(
        unique(ALICE) if client_id is None else client_id,
        version=version,
        username=ALICE if username is None else username,
        password=PASSWORDS[ALICE].encode(),
        will=will,
        properties=properties,
    )


def _publish(version: int, ns: str, properties: PropList) -> bytes:
    topic = f"sec/alice/{ns}/props"
    return encode_publish(topic, b"x", version=version, qos=1, packet_id=1, properties=properties)


def _will(ns: str, properties: PropList = ()) -> Will:
    return Will(f"sec/alice/{ns}/will", b"offline", qos=1, properties=properties)


ATTACKS: Final[dict[str, Attack]] = {
    "client-id": Attack(connect=lambda v, ns, bad: _connect(v, client_id=b"alice-" + bad)),
    "username": Attack(connect=lambda v, ns, bad: _connect(v, username=b"alice" + bad)),
    "will-topic": Attack(
        connect=lambda v, ns, bad: _connect(v, will=Will(f"sec/alice/{ns}/".encode() + bad))
    ),
    "will-content-type": Attack(
        connect=lambda v, ns, bad: _connect(
            v, will=_will(ns, [(Prop.CONTENT_TYPE, b"text/" + bad)])
        )
    ),
    "will-user-property": Attack(
        connect=lambda v, ns, bad: _connect(
            v, will=_will(ns, [(Prop.USER_PROPERTY, (b"key", b"value" + bad))])
        )
    ),
    "connect-user-property": Attack(
        connect=lambda v, ns, bad: _connect(
            v, properties=[(Prop.USER_PROPERTY, (b"key" + bad, b"value"))]
        )
    ),
    "topic": Attack(
        after_login=lambda v, ns, bad: encode_publish(
            f"sec/alice/{ns}/".encode() + bad, b"x", version=v, qos=1, packet_id=1
        )
    ),
    "publish-user-property": Attack(
        after_login=lambda v, ns, bad: _publish(
            v, ns, [(Prop.USER_PROPERTY, (b"key", b"value" + bad))]
        )
    ),
    "content-type": Attack(
        after_login=lambda v, ns, bad: _publish(v, ns, [(Prop.CONTENT_TYPE, b"text/" + bad)])
    ),
    "response-topic": Attack(
        after_login=lambda v, ns, bad: _publish(
            v, ns, [(Prop.RESPONSE_TOPIC, f"sec/alice/{ns}/".encode() + bad)]
        )
    ),
    "subscription-filter": Attack(
        after_login=lambda v, ns, bad: encode_subscribe(
            1, [(f"sec/alice/{ns}/".encode() + bad + b"/#", 1)], version=v
        )
    ),
}
V311_FIELDS: Final = ("client-id", "username", "will-topic", "topic", "subscription-filter")

CASES: Final = [
    pytest.param(MQTT_5, field, bad, id=f"v5-{field}-{name}")
    for field in ATTACKS
    for name, bad in BAD_UTF8.items()
] + [
    pytest.param(MQTT_311, field, bad, id=f"v311-{field}-{name}")
    for field in V311_FIELDS
    for name, bad in list(BAD_UTF8.items())[:2]
]


class Watchers:
    """The admin's v5 and 3.1.1 paho clients, kept for the module (logins are slow on purpose)
    and replaced if an attack ever cost one of them its connection (that test fails)."""

    def __init__(self, broker: Broker, clients: Clients) -> None:
        self.broker, self.clients = broker, clients
        self._members: dict[int, PahoClient] = {}

    def members(self) -> list[PahoClient]:
        for version in (V5, V311):
            member = self._members.get(version)
            if member is None or not member.is_connected():
                self._members[version] = connect_as(self.clients, self.broker, ADMIN, version)
            self._members[version].drain()
        return [self._members[V5], self._members[V311]]


@pytest.fixture(scope="module")
def watcher_pool(broker: Broker, module_clients: Clients) -> Watchers:
    return Watchers(broker, module_clients)


@pytest.fixture
def watchers(watcher_pool: Watchers, ns: str) -> Iterator[list[PahoClient]]:
    """Subscribed to the test's ``sec/alice/<ns>/#``; afterwards, still connected."""
    members = watcher_pool.members()
    for member in members:
        assert member.subscribe(f"sec/alice/{ns}/#", 1) == [1]
    yield members
    for member in members:
        assert member.is_connected(), f"{member.client_id} was disconnected by the attack"


def _offender(mqtt: Clients, broker: Broker, version: int) -> RawClient:
    return mqtt.raw(broker, version, source=loopback_address())


def _after_attack(watchers: list[PahoClient], ns: str) -> None:
    topic, payload = publish_sentinel(watchers[0], f"sec/alice/{ns}/sentinel")
    for watcher in watchers:
        expect_first(watcher, topic, payload)


@pytest.mark.parametrize(("version", "field", "bad"), CASES)
def test_invalid_utf8_is_refused_and_never_forwarded(
    *,
    broker: Broker,
    mqtt: Clients,
    watchers: list[PahoClient],
    ns: str,
    version: int,
    field: str,
    bad: bytes,
) -> None:
    attack = ATTACKS[field]
    if attack.connect is not None:
        offender = _offender(mqtt, broker, version)
        offender.try_send(attack.connect(version, ns, bad))
    else:
        assert attack.after_login is not None
        offender = raw_as(mqtt, broker, ALICE, version, source=loopback_address())
        offender.try_send(attack.after_login(version, ns, bad))
    leftovers = assert_cut_off(offender, CUT_OFF_CODES)
    assert leftovers == [], f"the broker answered the malformed packet with {leftovers}"
    _after_attack(watchers, ns)


@bastion_only("mosquitto does not check payloads against the Payload Format Indicator")
@pytest.mark.parametrize("qos", [0, 1])
def test_payload_format_indicator_is_enforced(
    broker: Broker, mqtt: Clients, watchers: list[PahoClient], ns: str, qos: int
) -> None:
    """Payload Format Indicator 1 promises UTF-8: an invalid payload is refused with 0x99
    (PUBACK for QoS 1, or DISCONNECT) and not forwarded; a valid one goes through."""
    offender = raw_as(mqtt, broker, ALICE, MQTT_5, source=loopback_address())
    offender.publish(
        f"sec/alice/{ns}/text",
        b"caf\xc3",  # truncated "café"
        qos=qos,
        properties=[(Prop.PAYLOAD_FORMAT_INDICATOR, 1)],
    )
    if qos == 1:
        packet = offender.recv()
        if packet.type == PacketType.PUBACK:
            assert decode_ack(packet, MQTT_5).reason_code == PAYLOAD_FORMAT_INVALID
        else:
            assert packet.type == PacketType.DISCONNECT, packet
            assert decode_disconnect(packet, MQTT_5).reason_code == PAYLOAD_FORMAT_INVALID
    else:
        assert_cut_off(offender, (PAYLOAD_FORMAT_INVALID,))
    _after_attack(watchers, ns)
    honest = raw_as(mqtt, broker, ALICE, MQTT_5)
    honest.publish(
        f"sec/alice/{ns}/text", "café".encode(), properties=[(Prop.PAYLOAD_FORMAT_INDICATOR, 1)]
    )
    for watcher in watchers:
        assert watcher.expect().payload == "café".encode()
