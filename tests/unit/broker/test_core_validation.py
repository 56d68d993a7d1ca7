"""Broker core, content rules: payload format, message size, topic length and depth, quotas.

A refused message is never routed. MQTT 5 QoS 1/2 publishers are answered in PUBACK/PUBREC
(§3.4.2.1: 0x90, 0x97 and 0x99 are PUBACK reason codes); QoS 0 and MQTT 3.1.1 publishers
have no negative acknowledgement, so they are disconnected (DISCONNECT with the reason on
MQTT 5, §4.13). Wills are refused at CONNECT (CONNACK). Filters get per-filter SUBACK codes.
"""

from __future__ import annotations

import pytest
from brokerkit import Harness

from bastion.mqtt.packets import Properties, Puback, Pubrec, Subscription, Will
from bastion.mqtt.reason_codes import ReasonCode
from bastion.security.audit import SecurityEventKind

NOT_UTF8 = b"\xc3\x28 broken"
UTF8 = Properties(payload_format_indicator=1)


# -- Payload Format Indicator (§3.3.2.3.2) -------------------------------------------------


def test_v5_qos1_payload_not_utf8_gets_puback_0x99_and_is_not_routed() -> None:
    h = Harness()
    watcher = h.connect("watcher")
    watcher.subscribe("#", qos=1)
    pub = h.connect("pub")
    pub.publish("t", NOT_UTF8, qos=1, packet_id=5, properties=UTF8)
    [ack] = pub.take()
    assert isinstance(ack, Puback)
    assert (ack.packet_id, ack.reason_code) == (5, ReasonCode.PAYLOAD_FORMAT_INVALID)
    assert ack.properties.reason_string
    assert watcher.take() == []
    assert not pub.link.closed  # the client is told, not disconnected
    assert h.stats.payload_format_invalid == 1
    [event] = h.events.events
    assert event.kind is SecurityEventKind.PAYLOAD_INVALID
    assert (event.client_id, event.ip, event.topic) == ("pub", "127.0.0.1", "t")
    assert event.reason_code == ReasonCode.PAYLOAD_FORMAT_INVALID


def test_v5_qos2_payload_not_utf8_gets_pubrec_0x99() -> None:
    h = Harness()
    watcher = h.connect("watcher")
    watcher.subscribe("#", qos=2)
    pub = h.connect("pub")
    pub.publish("t", NOT_UTF8, qos=2, packet_id=6, properties=UTF8)
    [ack] = pub.take()
    assert isinstance(ack, Pubrec)
    assert ack.reason_code == ReasonCode.PAYLOAD_FORMAT_INVALID
    assert 6 not in pub.live.state.inbound_qos2  # a failed PUBREC ends the flow
    assert watcher.take() == []


def test_v5_qos0_payload_not_utf8_disconnects_0x99() -> None:
    h = Harness()
    watcher = h.connect("watcher")
    watcher.subscribe("#")
    pub = h.connect("pub", will=Will("status/pub", b"offline"))
    pub.publish("t", NOT_UTF8, properties=UTF8)
    assert pub.link.closes == [ReasonCode.PAYLOAD_FORMAT_INVALID]
    assert not pub.live.open
    pub.publish("t", b"after the violation")  # ignored: the connection is closing
    assert watcher.take() == []
    pub.drop()
    [will] = watcher.take_publishes()  # not a normal disconnection: the will goes out
    assert will.topic == "status/pub"


@pytest.mark.parametrize(
    ("payload", "indicator"),
    [
        ("température".encode(), 1),
        (b"nul \x00 is fine in a payload", 1),
        (b"", 1),
        (NOT_UTF8, 0),  # 0: unspecified bytes, never checked
        (NOT_UTF8, None),
    ],
)
def test_payloads_that_pass(payload: bytes, indicator: int | None) -> None:
    h = Harness()
    watcher = h.connect("watcher")
    watcher.subscribe("t")
    pub = h.connect("pub")
    pub.publish("t", payload, qos=1, properties=Properties(payload_format_indicator=indicator))
    assert [m.payload for m in watcher.take_publishes()] == [payload]
    assert pub.take()[0] == Puback(1)
    assert h.stats.payload_format_invalid == 0


def test_reason_string_only_when_problem_information_is_wanted() -> None:
    h = Harness()
    pub = h.connect("pub", properties=Properties(request_problem_information=0))
    pub.publish("t", NOT_UTF8, qos=1, packet_id=1, properties=UTF8)
    assert pub.take() == [Puback(1, ReasonCode.PAYLOAD_FORMAT_INVALID)]


def test_will_payload_not_utf8_refuses_connect_0x99() -> None:
    h = Harness()
    will = Will("status/dev", NOT_UTF8, properties=UTF8)
    client = h.try_connect("dev", will=will)
    assert client.session is None
    assert client.connack.reason_code == ReasonCode.PAYLOAD_FORMAT_INVALID
    assert client.link.closed
    assert h.stats.payload_format_invalid == 1
    [event] = h.events.events
    assert (event.kind, event.topic) == (SecurityEventKind.PAYLOAD_INVALID, "status/dev")


# -- max_message_size ----------------------------------------------------------------------


def test_message_size_limit_v5_qos1_and_qos2() -> None:
    h = Harness(max_message_size=10)
    watcher = h.connect("watcher")
    watcher.subscribe("t", qos=2)
    pub = h.connect("pub")
    pub.publish("t", b"x" * 10, qos=1, packet_id=1)
    pub.publish("t", b"x" * 11, qos=1, packet_id=2)
    pub.publish("t", b"x" * 11, qos=2, packet_id=3)
    codes = [(p.packet_id, p.reason_code) for p in pub.take() if isinstance(p, Puback | Pubrec)]
    assert codes == [(1, 0), (2, ReasonCode.QUOTA_EXCEEDED), (3, ReasonCode.QUOTA_EXCEEDED)]
    assert [len(m.payload) for m in watcher.take_publishes()] == [10]
    assert h.stats.message_size_refused == 2


def test_message_size_limit_qos0_disconnects_0x97() -> None:
    h = Harness(max_message_size=10)
    pub = h.connect("pub")
    pub.publish("t", b"x" * 11)
    assert pub.link.closes == [ReasonCode.QUOTA_EXCEEDED]


def test_message_size_limit_v311_closes() -> None:
    h = Harness(max_message_size=10)
    pub = h.connect("pub", version=4)
    pub.publish("t", b"x" * 11, qos=1)
    assert pub.take() == []  # no PUBACK: 3.1.1 cannot say no
    assert pub.link.closes == [None]


def test_message_size_zero_means_only_the_packet_size_applies() -> None:
    h = Harness(max_message_size=0)
    watcher = h.connect("watcher")
    watcher.subscribe("t")
    h.connect("pub").publish("t", b"x" * 500_000)
    assert len(watcher.take_publishes()) == 1


def test_will_over_the_message_size_refuses_connect() -> None:
    h = Harness(max_message_size=4)
    client = h.try_connect("dev", will=Will("status/dev", b"offline"))
    assert client.connack.reason_code == ReasonCode.QUOTA_EXCEEDED
    assert h.stats.message_size_refused == 1


# -- topic length and depth ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "ok"),
    [
        ("a/345678", True),  # 8 bytes
        ("a/3456789", False),
        ("éééé", True),  # 4 characters, 8 bytes
        ("ééééx", False),  # 5 characters, 9 bytes: bytes count, not characters
        ("😀😀", True),  # 8 bytes
        ("😀😀x", False),
    ],
)
def test_topic_length_counts_utf8_bytes(topic: str, ok: bool) -> None:
    h = Harness(max_topic_length=8)
    pub = h.connect("pub")
    pub.publish(topic, qos=1, packet_id=1)
    expected = ReasonCode.NO_MATCHING_SUBSCRIBERS if ok else ReasonCode.TOPIC_NAME_INVALID
    assert [p.reason_code for p in pub.take() if isinstance(p, Puback)] == [expected]


@pytest.mark.parametrize(
    ("topic", "ok"), [("a/b/c", True), ("a//", True), ("a/b/c/d", False), ("///", False)]
)
def test_topic_levels(topic: str, ok: bool) -> None:
    h = Harness(max_topic_levels=3)
    watcher = h.connect("watcher")
    watcher.subscribe("#")
    pub = h.connect("pub")
    pub.publish(topic, qos=1, packet_id=1)
    [ack] = pub.take()
    assert isinstance(ack, Puback)
    assert (ack.reason_code == ReasonCode.SUCCESS) is ok
    assert len(watcher.take()) == (1 if ok else 0)
    assert h.stats.topic_limit_refused == (0 if ok else 1)


def test_topic_over_the_limit_qos0_v5_disconnects_0x90() -> None:
    h = Harness(max_topic_levels=2)
    pub = h.connect("pub")
    pub.publish("a/b/c")
    assert pub.link.closes == [ReasonCode.TOPIC_NAME_INVALID]


def test_topic_over_the_limit_v311_closes() -> None:
    h = Harness(max_topic_levels=2)
    pub = h.connect("pub", version=4)
    pub.publish("a/b/c", qos=2)
    assert pub.take() == []
    assert pub.link.closes == [None]


def test_will_topic_over_the_limit_refuses_connect_0x90() -> None:
    h = Harness(max_topic_length=8)
    client = h.try_connect("dev", will=Will("status/much-too-long", b"x"))
    assert client.connack.reason_code == ReasonCode.TOPIC_NAME_INVALID
    [event] = h.events.events
    assert event.kind is SecurityEventKind.LIMIT_EXCEEDED
    assert "topic_limit" in event.detail


def test_filter_limits_in_suback() -> None:
    h = Harness(max_topic_length=16, max_topic_levels=3)
    sub = h.connect("sub")
    suback = sub.subscribe(
        "a/+/c",
        "a/+/c/#",  # 4 levels
        "$share/g/a/b/c",  # levels count after the share name: 3
        "much/too/long/filter",  # 20 bytes
        Subscription("x/y", 1),
    )
    assert suback.reason_codes == (
        0,
        ReasonCode.TOPIC_FILTER_INVALID,
        0,
        ReasonCode.TOPIC_FILTER_INVALID,
        1,
    )
    assert h.stats.filter_limit_refused == 2
    assert h.broker.subscriptions.count_of("sub") == 3
    old = h.connect("old", version=4)
    assert old.subscribe("a/b/c/d").reason_codes == (0x80,)


# -- max_subscriptions_per_client ----------------------------------------------------------


def test_subscription_quota() -> None:
    h = Harness(max_subscriptions_per_client=2)
    sub = h.connect("sub")
    assert sub.subscribe("a", "b", "c").reason_codes == (0, 0, ReasonCode.QUOTA_EXCEEDED)
    assert sub.subscribe("a", qos=1).reason_codes == (1,)  # replacing a held filter is fine
    assert sub.subscribe("$share/g/d").reason_codes == (ReasonCode.QUOTA_EXCEEDED,)
    sub.unsubscribe("a")
    assert sub.subscribe("c").reason_codes == (0,)
    assert h.stats.subscription_quota_refused == 2
    old = h.connect("old", version=4)
    assert old.subscribe("a", "b", "c").reason_codes == (0, 0, 0x80)


def test_subscription_quota_is_per_session() -> None:
    h = Harness(max_subscriptions_per_client=1)
    first = h.connect("first", clean=False, expiry=60)
    assert first.subscribe("a").reason_codes == (0,)
    first.drop()
    back = h.connect("first", clean=False, expiry=60)
    assert back.subscribe("b").reason_codes == (ReasonCode.QUOTA_EXCEEDED,)
    assert h.connect("second").subscribe("b").reason_codes == (0,)


# -- counting and reporting once per episode -----------------------------------------------


def test_repeats_are_counted_but_reported_once_per_connection() -> None:
    h = Harness(max_topic_levels=1)
    pub = h.connect("pub")
    for packet_id in (1, 2, 3):
        pub.publish("a/b", qos=1, packet_id=packet_id)
    assert h.stats.topic_limit_refused == 3
    assert len(h.events.events) == 1
    assert h.log.events() == ["security.topic_limit"]
    pub.disconnect()
    assert h.log.lines[-1][1:] == (
        "security.episode_ended",
        {"defence": "topic_limit", "client_id": "pub", "hits": 3},
    )
    again = h.connect("pub")
    again.publish("a/b", qos=1)
    assert len(h.events.events) == 2  # a new connection, a new episode


def test_a_failing_sink_does_not_break_the_broker() -> None:
    h = Harness(max_topic_levels=1)

    def broken(event: object, now: float) -> None:
        raise RuntimeError("audit disk full")

    h.broker.on_security_event = broken
    pub = h.connect("pub")
    pub.publish("a/b", qos=1, packet_id=1)
    [ack] = pub.take()
    assert isinstance(ack, Puback)
    assert ack.reason_code == ReasonCode.TOPIC_NAME_INVALID
    assert [line[1] for line in h.log.lines if line[0] == "exception"] == ["security.sink_failed"]
    assert h.stats.topic_limit_refused == 1


def test_events_carry_the_brokers_clock() -> None:
    h = Harness(max_topic_levels=1)
    h.now = 1234.5
    h.connect("pub").publish("a/b", qos=1)
    assert h.events.times == [1234.5]
