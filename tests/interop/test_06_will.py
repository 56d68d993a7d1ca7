"""06 will: Will Messages on abnormal disconnects, never on a clean DISCONNECT (3.1.1 and 5.0).

Will Delay and DISCONNECT 0x04 are MQTT 5 features and live in test_08.
"""

from __future__ import annotations

import pytest

from support.brokerproc import Broker
from support.clients import Clients, unique
from support.pahoclient import V5, V311, PahoClient, PahoWill
from support.rawclient import Prop, PropList, Will, encode_publish

pytestmark = pytest.mark.interop
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


def _watcher(mqtt: Clients, broker: Broker, topic: str, qos: int = 2) -> PahoClient:
    watcher = mqtt.paho(broker, V5)
    assert watcher.subscribe(topic, qos) == [qos]
    return watcher


@both_versions
@pytest.mark.parametrize("will_qos", [0, 1, 2], ids=lambda q: f"will{q}")
def test_will_is_published_when_connection_drops(
    broker: Broker, mqtt: Clients, ns: str, version: int, will_qos: int
) -> None:
    topic = f"{ns}/will"
    watcher = _watcher(mqtt, broker, topic)
    raw = mqtt.raw(broker, version)
    raw.connect(unique(), will=Will(topic, b"gone", qos=will_qos))
    raw.ping()
    watcher.expect_none(0.1)  # nothing while the client is alive
    raw.abort()
    msg = watcher.expect()  # [MQTT-3.1.2-8]
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (topic, b"gone", will_qos, False)


@both_versions
def test_paho_will_is_published_when_socket_is_cut(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic = f"{ns}/will"
    watcher = _watcher(mqtt, broker, topic)
    client = mqtt.paho(broker, version, will=PahoWill(topic, b"paho-gone", qos=1))
    client.kill_connection()
    msg = watcher.expect()
    assert (msg.payload, msg.qos) == (b"paho-gone", 1)


@both_versions
def test_will_is_not_published_after_disconnect(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic = f"{ns}/will"
    watcher = _watcher(mqtt, broker, topic)
    client = mqtt.paho(broker, version, will=PahoWill(topic, b"must not appear", qos=1))
    client.disconnect()  # [MQTT-3.1.2-10] / [MQTT-3.14.4-3]: the will is discarded
    watcher.expect_none(0.5)


@both_versions
def test_retained_will_is_stored(broker: Broker, mqtt: Clients, ns: str, version: int) -> None:
    topic = f"{ns}/will"
    watcher = _watcher(mqtt, broker, topic)
    raw = mqtt.raw(broker, version)
    raw.connect(unique(), will=Will(topic, b"last words", qos=1, retain=True))
    raw.abort()
    assert watcher.expect().payload == b"last words"  # published (so stored) by now
    late = mqtt.paho(broker, version)
    late.subscribe(topic, 1)
    msg = late.expect()
    assert (msg.payload, msg.retain) == (b"last words", True)


@both_versions
def test_will_is_published_after_protocol_error(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic = f"{ns}/will"
    watcher = _watcher(mqtt, broker, topic)
    raw = mqtt.raw(broker, version)
    raw.connect(unique(), will=Will(topic, b"broke the rules", qos=1))
    raw.try_send(encode_publish(f"{ns}/x", b"", version=version, qos=3, packet_id=1))  # QoS 3
    raw.read_until_closed()
    assert watcher.expect().payload == b"broke the rules"  # closed on protocol error


@both_versions
def test_empty_will_payload_is_allowed(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic = f"{ns}/will"
    watcher = _watcher(mqtt, broker, topic)
    raw = mqtt.raw(broker, version)
    raw.connect(unique(), will=Will(topic, b"", qos=1))
    raw.abort()
    msg = watcher.expect()
    assert (msg.topic, msg.payload) == (topic, b"")


def test_v5_will_properties_are_forwarded(broker: Broker, mqtt: Clients, ns: str) -> None:
    topic = f"{ns}/will"
    watcher = _watcher(mqtt, broker, topic)
    props: PropList = [
        (Prop.PAYLOAD_FORMAT_INDICATOR, 1),
        (Prop.CONTENT_TYPE, "text/plain"),
        (Prop.RESPONSE_TOPIC, f"{ns}/reply"),
        (Prop.CORRELATION_DATA, b"\x00\x01corr"),
        (Prop.USER_PROPERTY, ("device", "sensor-7")),
        (Prop.USER_PROPERTY, ("device", "duplicate keys are legal")),
    ]
    raw = mqtt.raw(broker, V5)
    raw.connect(unique(), will=Will(topic, "åäö".encode(), qos=1, properties=props))
    raw.abort()
    msg = watcher.expect()
    assert msg.payload == "åäö".encode()
    assert msg.props.get_int("PayloadFormatIndicator") == 1
    assert msg.props.get_str("ContentType") == "text/plain"
    assert msg.props.get_str("ResponseTopic") == f"{ns}/reply"
    assert msg.props.get_bytes("CorrelationData") == b"\x00\x01corr"
    assert msg.props.get_pairs() == [("device", "sensor-7"), ("device", "duplicate keys are legal")]


def test_v311_will_reaches_v311_subscriber(broker: Broker, mqtt: Clients, ns: str) -> None:
    topic = f"{ns}/will"
    watcher = mqtt.paho(broker, V311)
    watcher.subscribe(topic, 1)
    raw = mqtt.raw(broker, V311)
    raw.connect(unique(), will=Will(topic, b"bye", qos=1))
    raw.abort()
    msg = watcher.expect()
    assert (msg.payload, msg.qos, msg.retain) == (b"bye", 1, False)
