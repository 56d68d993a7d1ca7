"""Broker core, SUBSCRIBE/UNSUBSCRIBE and retained messages (MQTT 5 §3.8-§3.11, §3.3.1.3).

Covers SUBACK codes, feature switches, subscription identifiers, and the retained store:
set, clear, Retain Handling 0/1/2, Retain As Published and expiry.
"""

from __future__ import annotations

from brokerkit import DenyingPolicy, Harness

from bastion.mqtt.packets import Properties, Subscribe, Subscription
from bastion.mqtt.reason_codes import ReasonCode
from bastion.security.audit import SecurityEventKind


def test_suback_grants_at_most_the_server_maximum_qos() -> None:
    h = Harness(max_qos=1)
    client = h.connect("c")
    suback = client.subscribe(
        Subscription("a", qos=0), Subscription("b", qos=1), Subscription("c", qos=2)
    )
    assert suback.reason_codes == (0, 1, 1)
    h.connect("pub").publish("c", qos=1)
    assert [m.qos for m in client.take_publishes()] == [1]


def test_invalid_filter_fails_only_its_own_entry() -> None:
    h = Harness()
    v5 = h.connect("v5")
    assert v5.subscribe("ok/#", "bad/#/x", "a+").reason_codes == (
        0,
        ReasonCode.TOPIC_FILTER_INVALID,
        ReasonCode.TOPIC_FILTER_INVALID,
    )
    v311 = h.connect("v311", version=4)
    assert v311.subscribe("ok", "bad#").reason_codes == (0, 0x80)
    assert h.broker.stats.subscriptions_count == 2


def test_not_authorized_subscription() -> None:
    h = Harness(DenyingPolicy(subscribe=("secret/#",)))
    v5 = h.connect("v5")
    assert v5.subscribe("secret/#", "open").reason_codes == (ReasonCode.NOT_AUTHORIZED, 0)
    v311 = h.connect("v311", version=4)
    assert v311.subscribe("secret/#").reason_codes == (0x80,)
    # A shared subscription is authorized on its topic filter, without the $share prefix.
    assert v5.subscribe("$share/g/secret/#").reason_codes == (ReasonCode.NOT_AUTHORIZED,)
    assert h.stats.acl_denied == 3  # audited: counted, first of each client's episode reported
    denied = [e for e in h.events.events if e.kind == SecurityEventKind.ACL_DENIED]
    assert [(e.client_id, e.topic) for e in denied] == [("v5", "secret/#"), ("v311", "secret/#")]


def test_feature_switches() -> None:
    h = Harness(shared_subscription_available=False, wildcard_subscription_available=False)
    client = h.connect("c")
    assert client.subscribe("$share/g/t", "a/+", "a/#", "a/b").reason_codes == (
        ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
        ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
        0,
    )


def test_subscription_identifier_when_unavailable_disconnects() -> None:
    h = Harness(subscription_identifier_available=False)
    client = h.connect("c")
    before = len(client.link.sent)
    client.send(Subscribe(1, (Subscription("t"),), Properties(subscription_identifiers=(5,))))
    assert len(client.link.sent) == before  # no SUBACK
    assert client.link.closes == [ReasonCode.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED]


def test_shared_subscription_with_no_local_is_a_protocol_error() -> None:
    h = Harness()
    client = h.connect("c")
    client.send(Subscribe(1, (Subscription("ok"), Subscription("$share/g/t", no_local=True))))
    assert client.link.closes == [ReasonCode.PROTOCOL_ERROR]
    assert h.broker.stats.subscriptions_count == 0  # nothing of the packet was applied


def test_resubscribing_replaces_the_subscription() -> None:
    h = Harness()
    client = h.connect("c")
    client.subscribe(Subscription("t", qos=0), identifier=1)
    client.subscribe(Subscription("t", qos=2), identifier=2)
    assert h.broker.stats.subscriptions_count == 1
    h.connect("pub").publish("t", qos=2)
    [msg] = client.take_publishes()
    assert msg.qos == 2 and msg.properties.subscription_identifiers == (2,)


def test_unsubscribe_codes() -> None:
    h = Harness()
    v5 = h.connect("v5")
    v5.subscribe("a", "$share/g/b")
    reply = v5.unsubscribe("a", "nope", "$share/g/b", "bad/#/x")
    assert reply.reason_codes == (
        ReasonCode.SUCCESS,
        ReasonCode.NO_SUBSCRIPTION_EXISTED,
        ReasonCode.SUCCESS,
        ReasonCode.TOPIC_FILTER_INVALID,
    )
    assert h.broker.stats.subscriptions_count == 0
    h.connect("pub").publish("a")
    assert v5.take() == []
    v311 = h.connect("v311", version=4)
    v311.subscribe("a")
    assert v311.unsubscribe("a").reason_codes == ()  # 3.1.1 UNSUBACK has no payload


def test_unsubscribed_inflight_message_still_completes() -> None:
    h = Harness()
    client = h.connect("c")
    client.subscribe("t", qos=1)
    h.connect("pub").publish("t", qos=1)
    [msg] = client.take_publishes()
    client.unsubscribe("t")
    assert msg.packet_id in client.live.state.outbox.inflight
    client.ack(msg)
    assert not client.live.state.outbox.inflight


# -- retained messages -------------------------------------------------------------------


def test_retained_message_is_sent_after_suback_with_retain_flag() -> None:
    h = Harness()
    pub = h.connect("pub")
    pub.publish("r/a", b"A", qos=1, retain=True)
    pub.publish("r/b", b"B", qos=0, retain=True)
    assert len(h.broker.retained) == 2
    sub = h.connect("sub")
    suback = sub.subscribe(Subscription("r/+", qos=2), identifier=9)
    assert suback.reason_codes == (2,)
    msgs = sorted(sub.take_publishes(), key=lambda m: m.topic)
    assert [(m.topic, m.payload, m.qos, m.retain) for m in msgs] == [
        ("r/a", b"A", 1, True),
        ("r/b", b"B", 0, True),
    ]
    assert all(m.properties.subscription_identifiers == (9,) for m in msgs)


def test_retained_qos_is_capped_by_the_granted_qos() -> None:
    h = Harness()
    h.connect("pub").publish("r", qos=2, retain=True)
    sub = h.connect("sub")
    sub.subscribe(Subscription("r", qos=1))
    assert [m.qos for m in sub.take_publishes()] == [1]


def test_empty_retained_payload_clears_and_is_still_forwarded() -> None:
    h = Harness()
    pub = h.connect("pub")
    pub.publish("r", b"value", retain=True)
    live = h.connect("live")
    live.subscribe("r")
    live.take()
    pub.publish("r", b"", retain=True)
    assert len(h.broker.retained) == 0
    assert h.broker.stats.retained_count == 0
    assert [m.payload for m in live.take_publishes()] == [b""]
    late = h.connect("late")
    late.subscribe("r")
    assert late.take() == []


def test_retain_handling() -> None:
    h = Harness()
    h.connect("pub").publish("r", b"v", retain=True)
    client = h.connect("c")
    client.subscribe(Subscription("r", retain_handling=0))
    assert len(client.take_publishes()) == 1
    client.subscribe(Subscription("r", retain_handling=0))  # 0: on every subscribe
    assert len(client.take_publishes()) == 1
    client.subscribe(Subscription("r", retain_handling=1))  # 1: only if new - it is not
    assert client.take() == []
    other = h.connect("other")
    other.subscribe(Subscription("r", retain_handling=1))  # new: sent
    assert len(other.take_publishes()) == 1
    never = h.connect("never")
    never.subscribe(Subscription("r", retain_handling=2))  # 2: never
    assert never.take() == []


def test_no_retained_messages_for_shared_subscriptions() -> None:
    h = Harness()
    h.connect("pub").publish("r", b"v", retain=True)
    client = h.connect("c")
    client.subscribe("$share/g/r")
    assert client.take() == []


def test_retained_messages_respect_may_receive() -> None:
    h = Harness(DenyingPolicy(receive=(("c", "r/secret"),)))
    pub = h.connect("pub")
    pub.publish("r/secret", retain=True)
    pub.publish("r/open", retain=True)
    client = h.connect("c")
    client.subscribe("r/#")
    assert [m.topic for m in client.take_publishes()] == ["r/open"]


def test_wildcards_do_not_match_sys_retained_topics() -> None:
    h = Harness(sys_interval=10)
    h.advance(0)
    client = h.connect("c")
    client.subscribe("#")
    assert client.take() == []
    client.subscribe("$SYS/broker/version")
    assert [m.payload for m in client.take_publishes()] == [b"bastion version 9.9.9"]


def test_expired_retained_message_is_not_sent_and_is_removed() -> None:
    h = Harness()
    h.connect("pub").publish(
        "r", b"v", retain=True, properties=Properties(message_expiry_interval=10)
    )
    early = h.connect("early")
    early.subscribe("r")
    [msg] = early.take_publishes()
    assert msg.properties.message_expiry_interval == 10
    h.advance(4)
    mid = h.connect("mid")
    mid.subscribe("r")
    assert [m.properties.message_expiry_interval for m in mid.take_publishes()] == [6]
    h.advance(6)
    late = h.connect("late")
    late.subscribe("r")
    assert late.take() == []
    assert len(h.broker.retained) == 0


def test_retained_messages_beyond_the_window_are_queued() -> None:
    h = Harness(max_inflight_messages=2)
    pub = h.connect("pub")
    for i in range(5):
        pub.publish(f"r/{i}", qos=1, retain=True)
    sub = h.connect("sub")
    sub.subscribe(Subscription("r/#", qos=1))
    first = sub.take_publishes()
    assert len(first) == 2
    for msg in first:
        sub.ack(msg)
    second = sub.take_publishes()
    assert len(second) == 2
    for msg in second:
        sub.ack(msg)
    assert len(sub.take_publishes()) == 1
