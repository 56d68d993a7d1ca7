"""04 retain: storing, replacing, clearing and delivering retained messages (3.1.1 and 5.0)."""

from __future__ import annotations

import pytest

from support.brokerproc import Broker
from support.clients import Clients
from support.pahoclient import V5, V311

pytestmark = pytest.mark.interop
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


@both_versions
@pytest.mark.parametrize("stored_qos", [0, 1, 2], ids=lambda q: f"stored{q}")
@pytest.mark.parametrize("sub_qos", [0, 2], ids=lambda q: f"sub{q}")
def test_new_subscriber_gets_retained_message(
    broker: Broker, mqtt: Clients, ns: str, *, version: int, stored_qos: int, sub_qos: int
) -> None:
    topic = f"{ns}/r"
    mqtt.paho(broker, version).publish(topic, b"kept", stored_qos, retain=True)
    sub = mqtt.paho(broker, version)
    assert sub.subscribe(topic, sub_qos) == [sub_qos]
    msg = sub.expect()
    assert (msg.topic, msg.payload, msg.retain) == (topic, b"kept", True)  # [MQTT-3.3.1-6]
    assert msg.qos == min(stored_qos, sub_qos)
    sub.expect_none(0.1)


@both_versions
def test_newer_retained_message_replaces_older(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic = f"{ns}/r"
    pub = mqtt.paho(broker, version)
    pub.publish(topic, b"old", 1, retain=True)
    pub.publish(topic, b"new", 1, retain=True)
    sub = mqtt.paho(broker, version)
    sub.subscribe(topic, 1)
    assert sub.expect().payload == b"new"
    sub.expect_none(0.2)


@both_versions
def test_non_retained_publish_leaves_retained_message_alone(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic = f"{ns}/r"
    pub = mqtt.paho(broker, version)
    pub.publish(topic, b"retained", 1, retain=True)
    pub.publish(topic, b"live", 1, retain=False)
    sub = mqtt.paho(broker, version)
    sub.subscribe(topic, 1)
    msg = sub.expect()
    assert (msg.payload, msg.retain) == (b"retained", True)


@both_versions
def test_empty_retained_payload_clears_and_is_still_delivered(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic = f"{ns}/r"
    pub = mqtt.paho(broker, version)
    pub.publish(topic, b"soon gone", 1, retain=True)
    watcher = mqtt.paho(broker, version)
    watcher.subscribe(topic, 1)
    assert watcher.expect().retain is True
    pub.publish(topic, b"", 1, retain=True)
    live = watcher.expect()  # delivered normally to existing subscribers [MQTT-3.3.1-10]
    assert (live.payload, live.retain) == (b"", False)
    late = mqtt.paho(broker, version)
    late.subscribe(topic, 1)
    late.expect_none(0.3)  # nothing stored any more [MQTT-3.3.1-11]


@both_versions
def test_live_delivery_of_retained_publish_has_retain_flag_cleared(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic = f"{ns}/r"
    sub = mqtt.paho(broker, version)
    sub.subscribe(topic, 1)
    mqtt.paho(broker, version).publish(topic, b"live", 1, retain=True)
    msg = sub.expect()
    # 3.1.1 [MQTT-3.3.1-9]; 5.0 with Retain As Published = 0 [MQTT-3.3.1-12]
    assert (msg.payload, msg.retain) == (b"live", False)


@both_versions
def test_wildcard_subscription_gets_every_matching_retained_message(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    pub = mqtt.paho(broker, version)
    for topic in ("a/1", "a/2", "a/b/3", "other/4"):
        pub.publish(f"{ns}/{topic}", topic.encode(), 1, retain=True)
    sub = mqtt.paho(broker, version)
    sub.subscribe(f"{ns}/a/#", 1)
    got = sub.expect_n(3)
    assert sorted(m.payload for m in got) == [b"a/1", b"a/2", b"a/b/3"]
    assert all(m.retain for m in got)
    sub.expect_none(0.2)


def test_v311_resubscribe_sends_retained_messages_again(
    broker: Broker, mqtt: Clients, ns: str
) -> None:
    topic = f"{ns}/r"
    mqtt.paho(broker, V311).publish(topic, b"again", 1, retain=True)
    sub = mqtt.paho(broker, V311)
    sub.subscribe(topic, 1)
    assert sub.expect().payload == b"again"
    sub.subscribe(topic, 1)  # [MQTT-3.8.4-3]: retained messages are re-sent
    msg = sub.expect()
    assert (msg.payload, msg.retain) == (b"again", True)


@pytest.mark.parametrize(
    ("pub_version", "sub_version"), [(V311, V5), (V5, V311)], ids=["311to5", "5to311"]
)
def test_retained_message_crosses_protocol_versions(
    broker: Broker, mqtt: Clients, ns: str, *, pub_version: int, sub_version: int
) -> None:
    topic = f"{ns}/r"
    pub = mqtt.paho(broker, pub_version)
    pub.publish(topic, b"xv", 2, retain=True)
    pub.disconnect()  # retained messages outlive their publisher
    sub = mqtt.paho(broker, sub_version)
    sub.subscribe(topic, 2)
    msg = sub.expect()
    assert (msg.payload, msg.retain, msg.qos) == (b"xv", True, 2)
