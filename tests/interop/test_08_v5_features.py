"""08 MQTT 5 features: subscription options and identifiers, shared subscriptions, topic
aliases, flow control, packet size limits, expiry, properties passthrough and session control.
"""

from __future__ import annotations

import time

import pytest

from support.brokerproc import USING_MOSQUITTO, Broker, bastion_only
from support.clients import BrokerFactory, Clients, unique
from support.pahoclient import V5, PahoClient, PahoWill, PropInput
from support.rawclient import (
    MQTT_5,
    PacketType,
    Prop,
    PropList,
    RawClient,
    Will,
    decode_disconnect,
    encode_publish,
    encode_subscribe,
    subscription_options,
)

pytestmark = pytest.mark.interop

RH_SEND, RH_IF_NEW, RH_NEVER = 0, 1, 2


def _sub(mqtt: Clients, broker: Broker, topic: str, qos: int = 1) -> PahoClient:
    client = mqtt.paho(broker, V5)
    assert client.subscribe(topic, qos) == [qos]
    return client


def _expect_disconnect(raw: RawClient, codes: set[int], *, bare_close_ok: bool = False) -> None:
    """The broker answers with a v5 DISCONNECT carrying one of ``codes``, then closes.

    ``bare_close_ok`` accepts a close without DISCONNECT (4.13: the DISCONNECT is a SHOULD).
    """
    packets = raw.read_until_closed()
    if not packets and bare_close_ok:
        return
    assert len(packets) == 1, f"expected one DISCONNECT {sorted(codes)}, got {packets}"
    code = decode_disconnect(packets[0], MQTT_5).reason_code
    assert code in codes, f"DISCONNECT reason 0x{code:02x}, expected one of {sorted(codes)}"


# ----------------------------------------------------------------------------- subscription ids


def test_subscription_identifier_is_returned_with_messages(
    broker: Broker, mqtt: Clients, ns: str
) -> None:
    client = mqtt.paho(broker, V5)
    client.subscribe(f"{ns}/with/#", 1, subscription_id=7)
    client.subscribe(f"{ns}/without/#", 1)
    pub = mqtt.paho(broker, V5)
    pub.publish(f"{ns}/with/x", b"a", 1)
    assert client.expect().props.get_ints("SubscriptionIdentifier") == [7]
    pub.publish(f"{ns}/without/x", b"b", 1)
    assert not client.expect().props.has("SubscriptionIdentifier")


def test_resubscribe_replaces_subscription_identifier(
    broker: Broker, mqtt: Clients, ns: str
) -> None:
    client = mqtt.paho(broker, V5)
    client.subscribe(f"{ns}/t", 1, subscription_id=7)
    client.subscribe(f"{ns}/t", 1, subscription_id=300_000)  # multi-byte varint
    mqtt.paho(broker, V5).publish(f"{ns}/t", b"x", 1)
    assert client.expect().props.get_ints("SubscriptionIdentifier") == [300_000]
    client.expect_none(0.2)


def test_retained_message_carries_subscription_identifier(
    broker: Broker, mqtt: Clients, ns: str
) -> None:
    mqtt.paho(broker, V5).publish(f"{ns}/t", b"r", 1, retain=True)
    client = mqtt.paho(broker, V5)
    client.subscribe(f"{ns}/t", 1, subscription_id=42)
    msg = client.expect()
    assert msg.retain and msg.props.get_ints("SubscriptionIdentifier") == [42]


def test_overlapping_subscriptions_respect_max_qos_and_identifiers(
    broker: Broker, mqtt: Clients, ns: str
) -> None:
    """[MQTT-3.3.4-2..5]: one copy with max QoS and all ids, or one copy per subscription."""
    client = mqtt.paho(broker, V5)
    client.subscribe(f"{ns}/a/#", 1, subscription_id=1)
    client.subscribe(f"{ns}/+/b", 2, subscription_id=2)
    client.subscribe(f"{ns}/a/b", 0)
    mqtt.paho(broker, V5).publish(f"{ns}/a/b", b"x", 2)
    copies = client.collect(0.5)
    assert copies, "no delivery"
    assert max(m.qos for m in copies) == 2
    ids = [sorted(m.props.get_ints("SubscriptionIdentifier")) for m in copies]
    if len(copies) == 1:
        assert ids == [[1, 2]]
    else:
        assert len(copies) == 3 and sorted(map(tuple, ids)) == [(), (1,), (2,)], ids


@bastion_only("mosquitto sends one copy per matching subscription (allowed by [MQTT-3.3.4-2])")
def test_overlapping_subscriptions_deliver_one_copy(broker: Broker, mqtt: Clients, ns: str) -> None:
    client = mqtt.paho(broker, V5)
    client.subscribe(f"{ns}/a/#", 1, subscription_id=1)
    client.subscribe(f"{ns}/+/b", 2, subscription_id=2)
    client.subscribe(f"{ns}/#", 0, subscription_id=3)
    mqtt.paho(broker, V5).publish(f"{ns}/a/b", b"x", 2)
    msg = client.expect()
    assert msg.qos == 2
    assert sorted(msg.props.get_ints("SubscriptionIdentifier")) == [1, 2, 3]
    client.expect_none(0.3)


# ----------------------------------------------------------------------------- subscription options


def test_no_local_suppresses_own_messages(broker: Broker, mqtt: Clients, ns: str) -> None:
    topic = f"{ns}/chat"
    me = mqtt.paho(broker, V5)
    me.subscribe(topic, 1, no_local=True)
    other = _sub(mqtt, broker, topic)
    me.publish(topic, b"mine", 1)
    assert other.expect().payload == b"mine"
    me.expect_none(0.3)  # [MQTT-3.8.3-3]
    other.publish(topic, b"theirs", 1)
    assert me.expect().payload == b"theirs"


def test_retain_as_published(broker: Broker, mqtt: Clients, ns: str) -> None:
    topic = f"{ns}/rap"
    keep = mqtt.paho(broker, V5)
    keep.subscribe(topic, 1, retain_as_published=True)
    clear = mqtt.paho(broker, V5)
    clear.subscribe(topic, 1)
    pub = mqtt.paho(broker, V5)
    pub.publish(topic, b"r", 1, retain=True)
    pub.publish(topic, b"n", 1, retain=False)
    assert [(m.payload, m.retain) for m in keep.expect_n(2)] == [(b"r", True), (b"n", False)]
    assert [(m.payload, m.retain) for m in clear.expect_n(2)] == [(b"r", False), (b"n", False)]


@pytest.mark.parametrize(
    ("handling", "first", "again"),
    [(RH_SEND, True, True), (RH_IF_NEW, True, False), (RH_NEVER, False, False)],
    ids=["rh0-always", "rh1-if-new", "rh2-never"],
)
def test_retain_handling(
    broker: Broker, mqtt: Clients, ns: str, *, handling: int, first: bool, again: bool
) -> None:
    topic = f"{ns}/rh"
    mqtt.paho(broker, V5).publish(topic, b"stored", 1, retain=True)
    client = mqtt.paho(broker, V5)
    for expected in (first, again):  # subscribe, then subscribe again to the same filter
        client.subscribe(topic, 1, retain_handling=handling)
        if expected:
            assert client.expect().payload == b"stored"
        else:
            client.expect_none(0.3)


# ----------------------------------------------------------------------------- shared subscriptions


def _shared_group(
    mqtt: Clients, broker: Broker, group_filter: str, members: int
) -> list[PahoClient]:
    return [_sub(mqtt, broker, group_filter) for _ in range(members)]


def test_shared_subscription_distributes_messages(broker: Broker, mqtt: Clients, ns: str) -> None:
    topic = f"{ns}/work"
    group = _shared_group(mqtt, broker, f"$share/workers/{topic}", 2)
    other_group = _shared_group(mqtt, broker, f"$share/audit/{topic}", 1)
    plain = _sub(mqtt, broker, topic)
    pub = mqtt.paho(broker, V5)
    count = 10
    for i in range(count):
        pub.publish(topic, str(i).encode(), 1)
    assert len(plain.expect_n(count)) == count  # a normal subscriber sees everything
    assert len(other_group[0].expect_n(count)) == count  # every group gets every message
    shares: list[list[int]] = [[], []]
    deadline = time.monotonic() + 5.0
    while sum(map(len, shares)) < count and time.monotonic() < deadline:
        for share, member in zip(shares, group, strict=True):
            share.extend(int(m.payload) for m in member.collect(0.05))
    for share, member in zip(shares, group, strict=True):
        member.expect_none(0.1)  # and no duplicates trail behind
        share.sort()
    assert sorted(shares[0] + shares[1]) == list(range(count)), shares  # each exactly once
    assert abs(len(shares[0]) - len(shares[1])) <= 1, f"not round-robin: {shares}"


def test_shared_subscription_redistributes_when_member_leaves(
    broker: Broker, mqtt: Clients, ns: str
) -> None:
    topic = f"{ns}/work"
    stays, leaves = _shared_group(mqtt, broker, f"$share/g/{topic}", 2)
    pub = mqtt.paho(broker, V5)
    for i in range(4):
        pub.publish(topic, str(i).encode(), 1)
    got = len(stays.expect_n(2)) + len(leaves.expect_n(2))
    assert got == 4
    leaves.disconnect()  # session ends (no expiry): it leaves the group
    for i in range(4, 8):
        pub.publish(topic, str(i).encode(), 1)
    assert sorted(int(m.payload) for m in stays.expect_n(4)) == [4, 5, 6, 7]


@bastion_only("mosquitto 2.0.11 grants No Local on a shared subscription ([MQTT-3.8.3-4])")
def test_shared_subscription_with_no_local_is_protocol_error(
    broker: Broker, mqtt: Clients, ns: str
) -> None:
    raw = mqtt.raw(broker, MQTT_5)
    raw.connect(unique())
    options = subscription_options(1, no_local=True)
    raw.send(encode_subscribe(3, [(f"$share/g/{ns}/x", options)], version=MQTT_5))
    _expect_disconnect(raw, {0x82})  # [MQTT-3.8.3-4]


# ----------------------------------------------------------------------------- topic aliases


def test_inbound_topic_alias_from_paho(broker: Broker, mqtt: Clients, ns: str) -> None:
    sub = _sub(mqtt, broker, f"{ns}/#")
    pub = mqtt.paho(broker, V5)
    maximum = pub.connack.props.get_int("TopicAliasMaximum") or 0
    if maximum == 0:
        pytest.fail("broker offers no topic aliases (Topic Alias Maximum absent or 0)")
    pub.publish(f"{ns}/long/topic/name", b"1", 1, properties={"TopicAlias": 1})
    pub.publish("", b"2", 1, properties={"TopicAlias": 1})  # alias only
    pub.publish(f"{ns}/other", b"3", 1, properties={"TopicAlias": 1})  # remap alias 1
    pub.publish("", b"4", 1, properties={"TopicAlias": 1})
    got = [(m.topic, m.payload) for m in sub.expect_n(4)]
    assert got == [
        (f"{ns}/long/topic/name", b"1"),
        (f"{ns}/long/topic/name", b"2"),
        (f"{ns}/other", b"3"),
        (f"{ns}/other", b"4"),
    ]
    assert all(not m.props.has("TopicAlias") for m in sub.drain())


@pytest.mark.parametrize("case", ["above-maximum", "zero", "unmapped"])
def test_invalid_inbound_topic_alias(broker: Broker, mqtt: Clients, ns: str, case: str) -> None:
    raw = mqtt.raw(broker, MQTT_5)
    maximum = raw.connect(unique()).properties.get_int(Prop.TOPIC_ALIAS_MAXIMUM) or 0
    alias = {"above-maximum": maximum + 1, "zero": 0, "unmapped": 1}[case]
    topic = "" if case == "unmapped" else f"{ns}/t"
    raw.send(encode_publish(topic, b"x", version=MQTT_5, properties=[(Prop.TOPIC_ALIAS, alias)]))
    if case == "above-maximum":
        _expect_disconnect(raw, {0x94})  # Topic Alias invalid
    elif case == "zero":  # [MQTT-3.3.2-8]; mosquitto calls it malformed
        _expect_disconnect(raw, {0x94, 0x81, 0x82})
    else:  # empty topic with no mapping
        _expect_disconnect(raw, {0x82, 0x94})


def test_no_outbound_topic_alias_without_client_maximum(
    broker: Broker, mqtt: Clients, ns: str
) -> None:
    raw = mqtt.raw(broker, MQTT_5)
    raw.connect(unique())  # no Topic Alias Maximum: the server must not use aliases
    raw.subscribe([(f"{ns}/#", 0)])
    pub = mqtt.paho(broker, V5)
    for _ in range(3):
        pub.publish(f"{ns}/same", b"x", 0)
    for _ in range(3):
        msg = raw.expect_publish()
        assert msg.topic == f"{ns}/same" and not msg.properties.has(Prop.TOPIC_ALIAS)


@bastion_only("mosquitto never assigns topic aliases on outgoing PUBLISH")
def test_outbound_topic_aliases_assigned_by_server(broker: Broker, mqtt: Clients, ns: str) -> None:
    client_max = 2
    raw = mqtt.raw(broker, MQTT_5)
    raw.connect(unique(), properties=[(Prop.TOPIC_ALIAS_MAXIMUM, client_max)])
    raw.subscribe([(f"{ns}/#", 0)])
    sent = [f"{ns}/{t}" for t in ("a", "a", "b", "b", "c", "c", "a", "b", "c", "c")]
    pub = mqtt.paho(broker, V5)
    for i, topic in enumerate(sent):
        pub.publish(topic, str(i).encode(), 0)
    aliases: dict[int, str] = {}
    resolved: list[str] = []
    alias_only = 0
    for _ in sent:
        msg = raw.expect_publish()
        alias = msg.properties.get_int(Prop.TOPIC_ALIAS)
        if alias is None:
            assert msg.topic, "empty topic without alias"
            resolved.append(msg.topic)
            continue
        assert 1 <= alias <= client_max, f"alias {alias} beyond our maximum {client_max}"
        if msg.topic:
            aliases[alias] = msg.topic
        else:
            assert alias in aliases, f"alias {alias} used before being set"
            alias_only += 1
        resolved.append(aliases[alias])
    assert resolved == sent
    assert alias_only > 0, "the server never sent an alias-only PUBLISH"


# ----------------------------------------------------------------------------- flow control


def _window_client(mqtt: Clients, broker: Broker, topic: str, receive_maximum: int) -> RawClient:
    raw = mqtt.raw(broker, MQTT_5)
    raw.connect(unique(), properties=[(Prop.RECEIVE_MAXIMUM, receive_maximum)])
    raw.subscribe([(topic, 1)])
    pub = mqtt.paho(broker, V5)
    for i in range(5):
        pub.publish(topic, str(i).encode(), 1)
    return raw


def test_server_respects_client_receive_maximum(broker: Broker, mqtt: Clients, ns: str) -> None:
    raw = _window_client(mqtt, broker, f"{ns}/t", 2)
    assert [raw.expect_publish().payload for _ in range(2)] == [b"0", b"1"]
    raw.expect_nothing(0.3)  # [MQTT-3.3.4-9]: at most 2 unacknowledged


@bastion_only("mosquitto 2.0.11 sends two PUBLISHes for one PUBACK, overrunning the window")
def test_receive_maximum_window_refills_one_for_one(broker: Broker, mqtt: Clients, ns: str) -> None:
    raw = _window_client(mqtt, broker, f"{ns}/t", 2)
    in_flight = [raw.expect_publish(), raw.expect_publish()]
    for expected in (b"2", b"3", b"4"):
        oldest = in_flight.pop(0)
        assert oldest.packet_id is not None
        raw.ack(PacketType.PUBACK, oldest.packet_id)
        nxt = raw.expect_publish()
        assert nxt.payload == expected
        in_flight.append(nxt)
        raw.expect_nothing(0.1)  # one acknowledgement opens exactly one slot


@bastion_only("mosquitto ignores a client exceeding its Receive Maximum; Bastion sends 0x93")
def test_client_exceeding_server_receive_maximum_is_disconnected(
    broker_factory: BrokerFactory, mqtt: Clients, ns: str
) -> None:
    server = broker_factory(bastion_toml="[mqtt]\nreceive_maximum = 4\n")
    raw = mqtt.raw(server, MQTT_5)
    ack = raw.connect(unique())
    assert ack.properties.get_int(Prop.RECEIVE_MAXIMUM) == 4
    for packet_id in range(1, 6):  # QoS 2 without PUBREL: all five stay unacknowledged
        raw.try_send(encode_publish(f"{ns}/t", b"x", version=MQTT_5, qos=2, packet_id=packet_id))
    packets = raw.read_until_closed()
    assert [p.type for p in packets[:4]] == [PacketType.PUBREC] * 4, packets
    assert packets[-1].type == PacketType.DISCONNECT
    assert decode_disconnect(packets[-1], MQTT_5).reason_code == 0x93


# ----------------------------------------------------------------------------- packet size


def _publish_of_size(total: int, topic: str) -> bytes:
    """A QoS 0 v5 PUBLISH whose whole encoded size is exactly ``total`` bytes."""
    overhead = len(encode_publish(topic, b"", version=MQTT_5))
    packet = encode_publish(topic, b"p" * (total - overhead), version=MQTT_5)
    while len(packet) != total:  # the remaining-length varint may have grown
        overhead += len(packet) - total
        packet = encode_publish(topic, b"p" * (total - overhead), version=MQTT_5)
    return packet


def test_server_maximum_packet_size_is_enforced(
    broker_factory: BrokerFactory, mqtt: Clients, ns: str
) -> None:
    server = broker_factory(
        bastion_toml="[mqtt]\nmax_packet_size = 1024\n", mosquitto_conf="max_packet_size 1024"
    )
    sub = _sub(mqtt, server, f"{ns}/#", 0)
    raw = mqtt.raw(server, MQTT_5)
    assert raw.connect(unique()).properties.get_int(Prop.MAXIMUM_PACKET_SIZE) == 1024
    raw.send(_publish_of_size(1024, f"{ns}/fits"))
    assert sub.expect().topic == f"{ns}/fits"  # exactly at the limit is fine
    raw.try_send(_publish_of_size(2000, f"{ns}/too-big"))
    _expect_disconnect(raw, {0x95})  # Packet too large
    sub.expect_none(0.2)


@bastion_only("mosquitto 2.0.11 compares max_packet_size with the Remaining Length only")
def test_packet_one_byte_over_maximum_is_rejected(
    broker_factory: BrokerFactory, mqtt: Clients, ns: str
) -> None:
    server = broker_factory(bastion_toml="[mqtt]\nmax_packet_size = 1024\n")
    raw = mqtt.raw(server, MQTT_5)
    raw.connect(unique())
    raw.try_send(_publish_of_size(1025, f"{ns}/too-big"))  # the limit counts the whole packet
    _expect_disconnect(raw, {0x95})


@bastion_only("mosquitto has no default maximum packet size; Bastion's is 1 MiB")
def test_default_maximum_packet_size_rejects_on_header(broker: Broker, mqtt: Clients) -> None:
    raw = mqtt.raw(broker, MQTT_5)
    raw.connect(unique())
    # Only the fixed header announcing 2 MiB is sent: the broker must not wait for the body.
    raw.send(b"\x30" + bytes([0x80, 0x80, 0x80, 0x01]))
    _expect_disconnect(raw, {0x95})


def test_server_respects_client_maximum_packet_size(broker: Broker, mqtt: Clients, ns: str) -> None:
    raw = mqtt.raw(broker, MQTT_5)
    raw.connect(unique(), properties=[(Prop.MAXIMUM_PACKET_SIZE, 128)])
    raw.subscribe([(f"{ns}/t", 1)])
    big_reader = _sub(mqtt, broker, f"{ns}/t")
    pub = mqtt.paho(broker, V5)
    pub.publish(f"{ns}/t", b"B" * 500, 1)
    pub.publish(f"{ns}/t", b"small", 1)
    msg = raw.expect_publish()  # the big one is dropped for us [MQTT-3.1.2-25]
    assert msg.payload == b"small"
    assert [m.payload for m in big_reader.expect_n(2)] == [b"B" * 500, b"small"]


# ----------------------------------------------------------------------------- message expiry


def test_message_expiry_is_decremented_and_expired_messages_dropped(
    broker: Broker, mqtt: Clients, ns: str
) -> None:
    pub = mqtt.paho(broker, V5)
    pub.publish(f"{ns}/long", b"l", 1, retain=True, properties={"MessageExpiryInterval": 60})
    pub.publish(f"{ns}/short", b"s", 1, retain=True, properties={"MessageExpiryInterval": 1})
    offline_id = unique()  # a durable session that is offline while messages expire
    offline = mqtt.paho(broker, V5, client_id=offline_id, properties={"SessionExpiryInterval": 300})
    offline.subscribe(f"{ns}/q/#", 1)
    offline.disconnect()
    pub.publish(f"{ns}/q/short", b"gone", 1, properties={"MessageExpiryInterval": 1})
    pub.publish(f"{ns}/q/keep", b"kept", 1)

    live = _sub(mqtt, broker, f"{ns}/live")
    pub.publish(f"{ns}/live", b"v", 1, properties={"MessageExpiryInterval": 30})
    remaining = live.expect().props.get_int("MessageExpiryInterval")
    assert remaining is not None and 28 <= remaining <= 30  # forwarded, minus time waited

    time.sleep(2.5)  # expiry is in whole seconds: 1 s messages are surely stale now
    late = mqtt.paho(broker, V5)
    late.subscribe(f"{ns}/long", 1)
    msg = late.expect()
    remaining = msg.props.get_int("MessageExpiryInterval")
    assert remaining is not None and 50 <= remaining <= 58, remaining  # [MQTT-3.3.2-6]
    late.subscribe(f"{ns}/short", 1)
    late.expect_none(0.3)  # expired retained message is not delivered
    back = mqtt.paho(broker, V5, client_id=offline_id, clean=False)
    assert back.connack.session_present
    assert [m.payload for m in back.expect_n(1)] == [b"kept"]
    back.expect_none(0.2)  # the expired queued message is gone


# ----------------------------------------------------------------------------- passthrough


def test_user_properties_are_forwarded_in_order(broker: Broker, mqtt: Clients, ns: str) -> None:
    sub = _sub(mqtt, broker, f"{ns}/t")
    pairs = [("b", "2"), ("a", "1"), ("b", "again"), ("ключ", "значение"), ("", "")]
    mqtt.paho(broker, V5).publish(f"{ns}/t", b"x", 1, properties={"UserProperty": pairs})
    assert sub.expect().props.get_pairs() == pairs  # [MQTT-3.3.2-18]


def test_request_response_properties_are_forwarded(broker: Broker, mqtt: Clients, ns: str) -> None:
    sub = _sub(mqtt, broker, f"{ns}/req")
    props: dict[str, PropInput] = {
        "ResponseTopic": f"{ns}/resp/42",
        "CorrelationData": b"\x00\xffcorr",
        "ContentType": "application/json; charset=utf-8",
        "PayloadFormatIndicator": 1,
    }
    mqtt.paho(broker, V5).publish(f"{ns}/req", b'{"k": 1}', 1, properties=props)
    msg = sub.expect()
    assert msg.props.get_str("ResponseTopic") == f"{ns}/resp/42"  # [MQTT-3.3.2-15]
    assert msg.props.get_bytes("CorrelationData") == b"\x00\xffcorr"  # [MQTT-3.3.2-16]
    assert msg.props.get_str("ContentType") == "application/json; charset=utf-8"
    assert msg.props.get_int("PayloadFormatIndicator") == 1  # [MQTT-3.3.2-4]
    mqtt.paho(broker, V5).publish(f"{ns}/req", b"\xff\xfe", 1)
    plain = sub.expect()
    assert plain.props.names() <= {"SubscriptionIdentifier"}, plain.props


@pytest.mark.parametrize("requested", [0, 1])
def test_request_response_information(broker: Broker, mqtt: Clients, requested: int) -> None:
    raw = mqtt.raw(broker, MQTT_5)
    ack = raw.connect(unique(), properties=[(Prop.REQUEST_RESPONSE_INFORMATION, requested)])
    info = ack.properties.get_str(Prop.RESPONSE_INFORMATION)
    if requested == 0:
        assert info is None  # [MQTT-3.1.2-28]
    else:
        assert info is None or info != "", "Response Information, if sent, must be usable"


def test_request_problem_information_zero_suppresses_reason_strings(
    broker: Broker, mqtt: Clients, ns: str
) -> None:
    raw = mqtt.raw(broker, MQTT_5)
    raw.connect(unique(), properties=[(Prop.REQUEST_PROBLEM_INFORMATION, 0)])
    acks = [
        raw.unsubscribe([f"{ns}/never"]),  # likely 0x11
        raw.subscribe([(f"{ns}/t", 2)]),
    ]
    acks2 = [raw.publish_qos1(f"{ns}/nobody"), raw.publish_qos2(f"{ns}/nobody")]  # maybe 0x10
    raw.send(b"\x62\x02\x30\x39")  # PUBREL for unknown packet id 12345 -> PUBCOMP maybe 0x92
    acks2.append(raw.expect_ack(PacketType.PUBCOMP))
    forbidden = {Prop.REASON_STRING, Prop.USER_PROPERTY}
    for sub_ack in acks:
        assert not sub_ack.properties.ids() & forbidden, sub_ack  # [MQTT-3.1.2-29]
    for ack in acks2:
        assert not ack.properties.ids() & forbidden, ack


# ----------------------------------------------------------------------------- connection


def test_assigned_client_identifier(broker: Broker, mqtt: Clients, ns: str) -> None:
    raw = mqtt.raw(broker, MQTT_5)
    ack = raw.connect("", properties=[(Prop.SESSION_EXPIRY_INTERVAL, 60)])
    assigned = ack.properties.get_str(Prop.ASSIGNED_CLIENT_IDENTIFIER)
    assert assigned, "empty client id must get an Assigned Client Identifier [MQTT-3.2.2-16]"
    other = mqtt.raw(broker, MQTT_5).connect("").properties
    assert other.get_str(Prop.ASSIGNED_CLIENT_IDENTIFIER) not in (None, assigned)
    raw.subscribe([(f"{ns}/t", 1)])
    raw.disconnect()
    back = mqtt.raw(broker, MQTT_5)  # the assigned id names a real, resumable session
    resumed = back.connect(assigned, clean=False, properties=[(Prop.SESSION_EXPIRY_INTERVAL, 60)])
    assert resumed.session_present is True


def test_server_keep_alive_from_configuration(broker_factory: BrokerFactory, mqtt: Clients) -> None:
    server = broker_factory(
        bastion_toml="[mqtt]\nmax_keepalive = 10\n", mosquitto_conf="max_keepalive 10"
    )
    raw = mqtt.raw(server, MQTT_5)
    ack = raw.connect(unique(), keepalive=60)
    assert ack.properties.get_int(Prop.SERVER_KEEP_ALIVE) == 10  # [MQTT-3.2.2-21]
    within = mqtt.raw(server, MQTT_5).connect(unique(), keepalive=5)
    assert within.properties.get_int(Prop.SERVER_KEEP_ALIVE) in (None, 5)


@bastion_only("Bastion's max_keepalive is configurable to short values; mosquitto's minimum is 10")
def test_paho_follows_server_keep_alive(broker_factory: BrokerFactory, mqtt: Clients) -> None:
    server = broker_factory(bastion_toml="[mqtt]\nmax_keepalive = 1\n")
    client = mqtt.paho(server, V5, keepalive=60)
    assert client.connack.props.get_int("ServerKeepAlive") == 1
    time.sleep(2.5)  # paho pings every second as told, so the broker keeps it
    assert client.is_connected() and client.disconnected_info() is None


@pytest.mark.parametrize("expiry", [0, 60])
def test_session_expiry_interval_decides_session_present(
    broker: Broker, mqtt: Clients, expiry: int
) -> None:
    client_id = unique()
    props: PropList = [(Prop.SESSION_EXPIRY_INTERVAL, expiry)] if expiry else []
    raw = mqtt.raw(broker, MQTT_5)
    raw.connect(client_id, properties=props)
    raw.disconnect()
    back = mqtt.raw(broker, MQTT_5).connect(client_id, clean=False, properties=props)
    assert back.session_present is (expiry > 0)


def test_session_expires_after_interval(broker: Broker, mqtt: Clients) -> None:
    short_id, zeroed_id = unique(), unique()
    short = mqtt.raw(broker, MQTT_5)
    short.connect(short_id, properties=[(Prop.SESSION_EXPIRY_INTERVAL, 1)])
    short.disconnect()
    zeroed = mqtt.raw(broker, MQTT_5)  # expiry lowered to 0 in DISCONNECT: ends at once
    zeroed.connect(zeroed_id, properties=[(Prop.SESSION_EXPIRY_INTERVAL, 60)])
    zeroed.disconnect(properties=[(Prop.SESSION_EXPIRY_INTERVAL, 0)])
    props: PropList = [(Prop.SESSION_EXPIRY_INTERVAL, 60)]
    resumed = mqtt.raw(broker, MQTT_5).connect(zeroed_id, clean=False, properties=props)
    assert resumed.session_present is False  # 3.14.2.2.2: DISCONNECT may lower it
    time.sleep(2.5)
    again = mqtt.raw(broker, MQTT_5).connect(short_id, clean=False, properties=props)
    assert again.session_present is False


def test_session_takeover_sends_disconnect_0x8e(broker: Broker, mqtt: Clients) -> None:
    client_id = unique()
    first = mqtt.raw(broker, MQTT_5)
    first.connect(client_id)
    mqtt.paho(broker, V5, client_id=client_id)
    # [MQTT-3.1.4-3] Session taken over; mosquitto 2.0.11 closes without the DISCONNECT.
    _expect_disconnect(first, {0x8E}, bare_close_ok=USING_MOSQUITTO)


# ----------------------------------------------------------------------------- wills (v5 only)


def test_will_delay_interval(broker: Broker, mqtt: Clients, ns: str) -> None:
    watcher = _sub(mqtt, broker, f"{ns}/will/+")
    session = [(Prop.SESSION_EXPIRY_INTERVAL, 30)]
    delay = [(Prop.WILL_DELAY_INTERVAL, 1)]
    delayed = mqtt.raw(broker, MQTT_5)
    delayed.connect(unique(), properties=session, will=Will(f"{ns}/will/d", b"d", 1, False, delay))
    returning_id = unique()
    returning = mqtt.raw(broker, MQTT_5)
    returning_will = Will(f"{ns}/will/r", b"r", 1, False, delay)
    returning.connect(returning_id, properties=session, will=returning_will)

    start = time.monotonic()
    delayed.abort()
    returning.abort()
    mqtt.raw(broker, MQTT_5).connect(returning_id, clean=False, properties=session)
    watcher.expect_none(0.7)  # not before the delay
    assert watcher.expect(timeout=3.0).topic == f"{ns}/will/d"
    assert time.monotonic() - start >= 0.9
    watcher.expect_none(0.5)  # [MQTT-3.1.3-9]: reconnected in time, so no will


@bastion_only(
    "mosquitto 2.0.11 waits out the Will Delay even when the session ends first (expiry 0)"
)
def test_will_is_sent_when_session_ends_before_will_delay(
    broker: Broker, mqtt: Clients, ns: str
) -> None:
    watcher = _sub(mqtt, broker, f"{ns}/will")
    raw = mqtt.raw(broker, MQTT_5)  # Session Expiry 0: the session ends with the connection
    raw.connect(unique(), will=Will(f"{ns}/will", b"i", 1, False, [(Prop.WILL_DELAY_INTERVAL, 30)]))
    raw.abort()
    assert watcher.expect(timeout=2.0).payload == b"i"  # 3.1.3.2.2: whichever happens first


def test_disconnect_with_will_message_reason_publishes_will(
    broker: Broker, mqtt: Clients, ns: str
) -> None:
    watcher = _sub(mqtt, broker, f"{ns}/will")
    client = mqtt.paho(broker, V5, will=PahoWill(f"{ns}/will", b"on purpose", qos=1))
    client.disconnect(reason_code=0x04)  # Disconnect with Will Message
    assert watcher.expect().payload == b"on purpose"
