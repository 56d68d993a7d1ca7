"""05 session: persistent sessions, offline queueing and redelivery with DUP on reconnect.

Redelivery is checked with the raw client, which can stop mid-flow at an exact packet.
"""

from __future__ import annotations

import pytest

from support.brokerproc import Broker
from support.clients import Clients, unique
from support.pahoclient import V5, V311, PahoClient, PropInput
from support.rawclient import PacketType, Prop, PropList, RawClient

pytestmark = pytest.mark.interop
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


def _persistent_props(version: int) -> dict[str, PropInput]:
    return {"SessionExpiryInterval": 300} if version == V5 else {}


def _raw_persistent(version: int) -> PropList:
    return [(Prop.SESSION_EXPIRY_INTERVAL, 300)] if version == V5 else []


def _persistent_paho(
    mqtt: Clients, broker: Broker, version: int, client_id: str, *, first: bool = False
) -> PahoClient:
    """A durable-session paho client; ``first`` starts with a clean slate."""
    return mqtt.paho(
        broker,
        version,
        client_id=client_id,
        clean=first if version == V5 else False,
        properties=_persistent_props(version),
    )


@both_versions
def test_offline_messages_are_queued_for_persistent_session(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic, client_id = f"{ns}/q", unique()
    sub = _persistent_paho(mqtt, broker, version, client_id, first=True)
    assert sub.connack.session_present is False
    sub.subscribe(topic, 2)
    sub.disconnect()
    pub = mqtt.paho(broker, version)
    for qos in (0, 1, 2):
        pub.publish(topic, f"q{qos}".encode(), qos)
    back = _persistent_paho(mqtt, broker, version, client_id)
    assert back.connack.session_present is True  # [MQTT-3.2.2-2]
    # QoS 1 and 2 must be kept [MQTT-3.1.2-5]; queueing QoS 0 is optional.
    got = [back.expect().payload]
    got += [m.payload for m in back.expect_n(2 if got == [b"q0"] else 1)]
    assert got in ([b"q1", b"q2"], [b"q0", b"q1", b"q2"]), got
    back.expect_none(0.2)
    pub.publish(topic, b"after", 1)  # the subscription itself survived too
    assert back.expect().payload == b"after"


@both_versions
def test_offline_queue_preserves_order(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic, client_id = f"{ns}/q", unique()
    sub = _persistent_paho(mqtt, broker, version, client_id, first=True)
    sub.subscribe(topic, 1)
    sub.disconnect()
    pub = mqtt.paho(broker, version)
    for i in range(10):
        pub.publish(topic, str(i).encode(), 1)
    back = _persistent_paho(mqtt, broker, version, client_id)
    assert [int(m.payload) for m in back.expect_n(10)] == list(range(10))


def test_v311_clean_session_discards_previous_session(
    broker: Broker, mqtt: Clients, ns: str
) -> None:
    topic, client_id = f"{ns}/q", unique()
    sub = mqtt.paho(broker, V311, client_id=client_id, clean=False)
    sub.subscribe(topic, 1)
    sub.disconnect()
    clean = mqtt.paho(broker, V311, client_id=client_id, clean=True)
    assert clean.connack.session_present is False  # [MQTT-3.1.2-6]
    mqtt.paho(broker, V311).publish(topic, b"nobody", 1)
    clean.expect_none(0.3)  # the old subscription is gone
    clean.disconnect()
    again = mqtt.paho(broker, V311, client_id=client_id, clean=False)
    assert again.connack.session_present is False  # a clean session is never kept


@both_versions
def test_takeover_keeps_persistent_session(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic, client_id = f"{ns}/q", unique()
    first = _persistent_paho(mqtt, broker, version, client_id, first=True)
    first.subscribe(topic, 1)
    second = _persistent_paho(mqtt, broker, version, client_id)
    first.wait_disconnected()
    assert second.connack.session_present is True
    mqtt.paho(broker, version).publish(topic, b"moved", 1)
    assert second.expect().payload == b"moved"


# ----------------------------------------------------------------------------- raw redelivery


def _raw_session(mqtt: Clients, broker: Broker, version: int, client_id: str) -> RawClient:
    raw = mqtt.raw(broker, version)
    raw.connect(client_id, clean=False, properties=_raw_persistent(version))
    return raw


def _fresh_raw_session(
    mqtt: Clients, broker: Broker, version: int, topic: str, qos: int
) -> tuple[RawClient, str]:
    client_id = unique()
    raw = mqtt.raw(broker, version)
    ack = raw.connect(client_id, clean=True, properties=_raw_persistent(version))
    assert ack.session_present is False
    if version == V311:  # 3.1.1: a clean session is not kept; reconnect durable
        raw.disconnect()
        raw = _raw_session(mqtt, broker, version, client_id)
    assert raw.subscribe([(topic, qos)]).reason_codes == (qos,)
    return raw, client_id


@both_versions
@pytest.mark.parametrize("qos", [1, 2])
def test_unacknowledged_publish_is_resent_with_dup_on_reconnect(
    broker: Broker, mqtt: Clients, ns: str, version: int, qos: int
) -> None:
    topic = f"{ns}/redeliver"
    raw, client_id = _fresh_raw_session(mqtt, broker, version, topic, qos)
    mqtt.paho(broker, version).publish(topic, b"again", qos)
    first = raw.expect_publish()
    assert (first.dup, first.qos, first.payload) == (False, qos, b"again")
    raw.abort()  # gone without acknowledging
    back = mqtt.raw(broker, version)
    ack = back.connect(client_id, clean=False, properties=_raw_persistent(version))
    assert ack.session_present is True
    resent = back.expect_publish()  # [MQTT-4.4.0-1]
    assert (resent.dup, resent.qos, resent.payload) == (True, qos, b"again")  # [MQTT-3.3.1-1]
    assert resent.packet_id == first.packet_id
    assert resent.packet_id is not None
    if qos == 1:
        back.ack(PacketType.PUBACK, resent.packet_id)
    else:
        back.ack(PacketType.PUBREC, resent.packet_id)
        assert back.expect_ack(PacketType.PUBREL).packet_id == resent.packet_id
        back.ack(PacketType.PUBCOMP, resent.packet_id)
    back.expect_nothing(0.3)


@both_versions
def test_pubrel_not_publish_is_resent_after_pubrec(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic = f"{ns}/pubrel"
    raw, client_id = _fresh_raw_session(mqtt, broker, version, topic, 2)
    mqtt.paho(broker, version).publish(topic, b"exactly-once", 2)
    pub = raw.expect_publish()
    assert pub.packet_id is not None
    raw.ack(PacketType.PUBREC, pub.packet_id)
    assert raw.expect_ack(PacketType.PUBREL).packet_id == pub.packet_id
    raw.abort()  # PUBCOMP never sent
    back = _raw_session(mqtt, broker, version, client_id)
    rel = back.expect_ack(PacketType.PUBREL)  # [MQTT-4.4.0-1]: resend PUBREL, not PUBLISH
    assert (rel.packet_id, rel.flags) == (pub.packet_id, 0x02)
    back.ack(PacketType.PUBCOMP, pub.packet_id)
    back.expect_nothing(0.3)


@both_versions
def test_inbound_qos2_state_survives_reconnect(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic = f"{ns}/inbound"
    sub = mqtt.paho(broker, version)
    sub.subscribe(topic, 2)
    client_id = unique()
    first = mqtt.raw(broker, version)
    first.connect(client_id, clean=True, properties=_raw_persistent(version))
    if version == V311:
        first.disconnect()
        first = _raw_session(mqtt, broker, version, client_id)
    first.publish(topic, b"one", qos=2, packet_id=5)
    assert first.expect_ack(PacketType.PUBREC).packet_id == 5
    first.abort()  # lost before PUBREL
    back = _raw_session(mqtt, broker, version, client_id)
    back.publish(topic, b"one", qos=2, packet_id=5, dup=True)  # client's retry of PUBLISH
    assert back.expect_ack(PacketType.PUBREC).packet_id == 5
    back.ack(PacketType.PUBREL, 5)
    assert back.expect_ack(PacketType.PUBCOMP).packet_id == 5
    assert sub.expect().payload == b"one"
    sub.expect_none(0.3)  # exactly once across the reconnect
