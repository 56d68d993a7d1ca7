"""05 bounded redelivery: the QoS 2 (and QoS 1) redelivery loop of a subscriber that drops its
connection on every delivery — what a message with an invalid UTF-8 topic does to paho — ends
after ``mqtt.max_delivery_attempts`` (default 3): the message is dropped for that subscriber,
which then works normally, and every other subscriber got the message exactly once.

The same loop runs against mosquitto as a control: it redelivers on every reconnect, which
proves the loop here is real.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import pytest

from support.brokerproc import USING_MOSQUITTO, Broker, bastion_only
from support.clients import BrokerFactory, Clients, unique
from support.pahoclient import PahoClient
from support.rawclient import MQTT_5, MQTT_311, PacketType, Prop, PropList, RawClient
from support.settings import SettingValue

from .deployment import ADMIN, ALICE, hardened_config
from .harness import Bystanders, connect_as, raw_as

pytestmark = pytest.mark.security

DEFAULT_MAX_DELIVERY_ATTEMPTS: Final = 3  # issue 4: "configurable, default 3"
CONFIGURED_ATTEMPTS: Final = 2
CONFIGURED: Final[Mapping[str, SettingValue]] = {"mqtt.max_delivery_attempts": CONFIGURED_ATTEMPTS}
RECONNECTS: Final = 6  # more than either bound
REDELIVERY_WAIT: Final = 1.0  # a resend follows the CONNACK at once; this is the slack

VERSIONS = pytest.mark.parametrize("version", [MQTT_5, MQTT_311], ids=["v5", "v311"])


class LoopingSubscriber:
    """alice's device with a persistent session that "crashes" on the poisoned message."""

    def __init__(self, mqtt: Clients, broker: Broker, version: int) -> None:
        self.mqtt, self.broker, self.version = mqtt, broker, version
        self.client_id = unique(ALICE)
        self.properties: PropList = (
            [(Prop.SESSION_EXPIRY_INTERVAL, 300)] if version == MQTT_5 else []
        )
        self.raw = self._connect(first=True)

    def _connect(self, *, first: bool = False) -> RawClient:
        # v5: a fresh session that outlives the connection; 3.1.1: clean session 0 throughout
        clean = first and self.version == MQTT_5
        return raw_as(
            self.mqtt,
            self.broker,
            ALICE,
            self.version,
            client_id=self.client_id,
            clean=clean,
            properties=self.properties,
        )

    def crash_and_reconnect(self) -> None:
        self.raw.abort()
        self.raw = self._connect()


@dataclass
class Scene:
    looping: LoopingSubscriber
    healthy: PahoClient  # another subscriber (the admin), which must get everything once
    publisher: PahoClient
    topic: str


def _scene(
    mqtt: Clients, broker: Broker, healthy: PahoClient, *, version: int, qos: int, topic: str
) -> Scene:
    looping = LoopingSubscriber(mqtt, broker, version)
    looping.raw.subscribe([(topic, qos)])
    healthy.drain()
    assert healthy.subscribe(topic, 2) == [2]
    return Scene(looping, healthy, connect_as(mqtt, broker, ALICE), topic)


def _publish_loop(scene: Scene, qos: int) -> int:
    """Poison the subscriber and let it crash on every delivery; count the deliveries."""
    looping = scene.looping
    scene.publisher.publish(scene.topic, b"poison", 2)
    deliveries = 0
    for attempt in range(RECONNECTS):
        try:
            message = looping.raw.expect_publish(timeout=3.0 if attempt == 0 else REDELIVERY_WAIT)
        except TimeoutError:
            break
        assert message.payload == b"poison" and message.qos == qos, message
        deliveries += 1
        looping.crash_and_reconnect()
    assert scene.healthy.expect().payload == b"poison"
    return deliveries


def _still_works(scene: Scene, qos: int) -> None:
    """The looping subscriber is not stuck (a new message flows), and the healthy one got the
    poison exactly once (the next thing it sees is the new message)."""
    looping = scene.looping
    scene.publisher.publish(scene.topic, b"after", 2)
    message = looping.raw.expect_publish()
    assert message.payload == b"after"
    assert message.packet_id is not None
    if qos == 1:
        looping.raw.ack(PacketType.PUBACK, message.packet_id)
    else:
        looping.raw.ack(PacketType.PUBREC, message.packet_id)
        assert looping.raw.expect_ack(PacketType.PUBREL).packet_id == message.packet_id
        looping.raw.ack(PacketType.PUBCOMP, message.packet_id)
    assert scene.healthy.expect().payload == b"after"


@pytest.mark.parametrize(
    ("version", "qos"),
    [(MQTT_5, 2), (MQTT_311, 2), (MQTT_5, 1)],
    ids=["v5-qos2", "v311-qos2", "v5-qos1"],
)
def test_redelivery_to_a_crashing_subscriber_is_bounded(
    *,
    broker: Broker,
    mqtt: Clients,
    admin: PahoClient,
    bystanders: Bystanders,
    ns: str,
    version: int,
    qos: int,
) -> None:
    scene = _scene(mqtt, broker, admin, version=version, qos=qos, topic=f"sec/alice/{ns}/poison")
    deliveries = _publish_loop(scene, qos)
    if USING_MOSQUITTO:  # control: the loop is real, mosquitto resends on every reconnect
        assert deliveries == RECONNECTS
        return
    assert deliveries == DEFAULT_MAX_DELIVERY_ATTEMPTS, (
        f"delivered {deliveries} times, expected exactly {DEFAULT_MAX_DELIVERY_ATTEMPTS}"
    )
    _still_works(scene, qos)
    bystanders.exchange()


@bastion_only("mosquitto has no max_delivery_attempts")
def test_configured_bound(broker_factory: BrokerFactory, mqtt: Clients, ns: str) -> None:
    server = broker_factory(**hardened_config(CONFIGURED))
    healthy = connect_as(mqtt, server, ADMIN)
    scene = _scene(mqtt, server, healthy, version=MQTT_5, qos=2, topic=f"sec/alice/{ns}/poison")
    assert _publish_loop(scene, 2) == CONFIGURED_ATTEMPTS
    _still_works(scene, 2)


@VERSIONS
def test_pubrel_redelivery_is_bounded(
    *,
    broker: Broker,
    mqtt: Clients,
    admin: PahoClient,
    bystanders: Bystanders,
    ns: str,
    version: int,
) -> None:
    """The subscriber acknowledges the PUBLISH (PUBREC), then crashes on every PUBREL: the
    PUBLISH is never sent again (QoS 2 delivers once), the PUBREL at most N times."""
    scene = _scene(mqtt, broker, admin, version=version, qos=2, topic=f"sec/alice/{ns}/release")
    looping = scene.looping
    scene.publisher.publish(scene.topic, b"once", 2)
    message = looping.raw.expect_publish(timeout=3.0)
    assert message.payload == b"once" and message.packet_id is not None
    looping.raw.ack(PacketType.PUBREC, message.packet_id)
    releases = 0
    for attempt in range(RECONNECTS):
        try:
            packet = looping.raw.recv(timeout=3.0 if attempt == 0 else REDELIVERY_WAIT)
        except TimeoutError:
            break
        assert packet.type == PacketType.PUBREL, f"expected PUBREL, got {packet.name}"
        releases += 1
        looping.crash_and_reconnect()
    assert scene.healthy.expect().payload == b"once"
    if USING_MOSQUITTO:  # control: mosquitto resends the PUBREL on every reconnect
        assert releases == RECONNECTS
        return
    assert releases == DEFAULT_MAX_DELIVERY_ATTEMPTS, f"PUBREL sent {releases} times"
    _still_works(scene, 2)
    bystanders.exchange()
