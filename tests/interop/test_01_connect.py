"""01 connect: CONNECT/CONNACK, PING, DISCONNECT and client-id rules (3.1.1 and 5.0)."""

from __future__ import annotations

import time

import pytest

from support.brokerproc import Broker, bastion_only
from support.clients import BrokerFactory, Clients, unique
from support.pahoclient import V5, V311
from support.rawclient import MQTT_5, MQTT_311, PacketType, Prop, encode_connect

pytestmark = pytest.mark.interop
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


@both_versions
def test_paho_connects_and_disconnects(broker: Broker, mqtt: Clients, version: int) -> None:
    client = mqtt.paho(broker, version)
    assert client.connack.reason_code == 0
    assert client.connack.session_present is False  # [MQTT-3.2.2-1] / [MQTT-3.2.2-2]
    client.disconnect()
    assert not client.is_connected()


def test_v311_connack_is_exactly_four_bytes(broker: Broker, mqtt: Clients) -> None:
    raw = mqtt.raw(broker, MQTT_311)
    raw.send(encode_connect(unique(), version=MQTT_311))
    pkt = raw.expect(PacketType.CONNACK)
    assert (pkt.flags, pkt.body) == (0, b"\x00\x00")  # clean session: no session present


def test_v5_connack_properties_are_valid(broker: Broker, mqtt: Clients) -> None:
    raw = mqtt.raw(broker, MQTT_5)
    ack = raw.connect(unique())
    props = ack.properties
    assert ack.session_present is False
    # Properties that may appear at most once [MQTT-3.2.2 property table]
    for ident in (Prop.RECEIVE_MAXIMUM, Prop.MAXIMUM_PACKET_SIZE, Prop.TOPIC_ALIAS_MAXIMUM):
        assert len(props.get_all(ident)) <= 1, props
    receive_max = props.get_int(Prop.RECEIVE_MAXIMUM)
    assert receive_max is None or receive_max > 0  # 0 is a protocol error
    max_qos = props.get_int(Prop.MAXIMUM_QOS)
    assert max_qos in (None, 0, 1)  # only 0 or 1 may be sent; absent means 2
    max_packet = props.get_int(Prop.MAXIMUM_PACKET_SIZE)
    assert max_packet is None or max_packet > 0
    assert not props.has(Prop.ASSIGNED_CLIENT_IDENTIFIER)  # we supplied one


@bastion_only("default limits are max_packet_size 1 MiB, receive_maximum 1024, aliases 64")
def test_bastion_default_limits_in_connack(broker: Broker, mqtt: Clients) -> None:
    props = mqtt.raw(broker, MQTT_5).connect(unique()).properties
    assert props.get_int(Prop.RECEIVE_MAXIMUM) == 1024
    assert props.get_int(Prop.TOPIC_ALIAS_MAXIMUM) == 64
    assert props.get_int(Prop.MAXIMUM_PACKET_SIZE) == 1024 * 1024


@both_versions
def test_pingreq_gets_pingresp(broker: Broker, mqtt: Clients, version: int) -> None:
    raw = mqtt.raw(broker, version)
    raw.connect(unique())
    for _ in range(3):
        raw.send(b"\xc0\x00")
        pkt = raw.expect(PacketType.PINGRESP)
        assert (pkt.flags, pkt.body) == (0, b"")


@both_versions
def test_disconnect_makes_server_close(broker: Broker, mqtt: Clients, version: int) -> None:
    raw = mqtt.raw(broker, version)
    raw.connect(unique())
    raw.send(b"\xe0\x00")
    assert raw.read_until_closed() == []  # the server closes without answering [MQTT-3.14.4-1]


def test_v311_empty_client_id_with_clean_session_is_accepted(broker: Broker, mqtt: Clients) -> None:
    raw = mqtt.raw(broker, MQTT_311)
    ack = raw.connect("", clean=True)  # [MQTT-3.1.3-6]
    assert ack.session_present is False
    raw.ping()


def test_v311_empty_client_id_without_clean_session_is_rejected(
    broker: Broker, mqtt: Clients
) -> None:
    raw = mqtt.raw(broker, MQTT_311)
    ack = raw.connect("", clean=False, expect_success=False)
    assert (ack.session_present, ack.reason_code) == (False, 0x02)  # [MQTT-3.1.3-8]
    assert raw.read_until_closed() == []


@both_versions
def test_23_character_alphanumeric_client_id_is_accepted(
    broker: Broker, mqtt: Clients, version: int
) -> None:
    client_id = ("Az09" + unique("x").replace("-", "") * 3)[:23]
    assert len(client_id) == 23 and client_id.isalnum()
    mqtt.raw(broker, version).connect(client_id)  # [MQTT-3.1.3-5]


@pytest.mark.parametrize("level", [2, 6, 7, 0x45])
def test_unsupported_protocol_level_is_refused(broker: Broker, mqtt: Clients, level: int) -> None:
    raw = mqtt.raw(broker, MQTT_311)
    raw.send(encode_connect(unique(), version=level))
    packets = raw.read_until_closed()
    # [MQTT-3.1.2-2]: CONNACK 0x01 (3.1.1 form); a v5 server MAY answer 0x84 in v5 form.
    assert len(packets) <= 1, packets
    if packets:
        assert packets[0].type == PacketType.CONNACK, packets
        assert packets[0].body in (b"\x00\x01", b"\x00\x84\x00"), packets[0].body


def test_wrong_protocol_name_is_refused(broker: Broker, mqtt: Clients) -> None:
    raw = mqtt.raw(broker, MQTT_311)
    raw.send(encode_connect(unique(), version=MQTT_311, protocol_name=b"MQTX"))
    packets = raw.read_until_closed()  # [MQTT-3.1.2-1]: MAY close without CONNACK
    for pkt in packets:
        assert pkt.type == PacketType.CONNACK and pkt.body[1] != 0, packets


@both_versions
def test_connect_with_same_client_id_takes_over(
    broker: Broker, mqtt: Clients, version: int
) -> None:
    client_id, topic = unique(), f"takeover/{unique()}"
    first = mqtt.paho(broker, version, client_id=client_id)
    second = mqtt.paho(broker, version, client_id=client_id)
    first.wait_disconnected()  # [MQTT-3.1.4-2]: the existing client is disconnected
    assert second.subscribe(topic, 1) == [1]
    second.publish(topic, b"still here", 1)
    assert second.expect().payload == b"still here"
    assert second.is_connected()


@bastion_only("mosquitto 2.0.11 has no timeout for a connection that never sends CONNECT")
def test_connection_without_connect_is_closed_after_connect_timeout(
    broker_factory: BrokerFactory, mqtt: Clients
) -> None:
    server = broker_factory(bastion_toml="[mqtt]\nconnect_timeout = 1.0\n")
    idle = mqtt.raw(server, MQTT_311)
    start = time.monotonic()
    assert idle.read_until_closed(timeout=4.0) == []
    assert time.monotonic() - start >= 0.9
