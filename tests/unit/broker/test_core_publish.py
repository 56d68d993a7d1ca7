"""Broker core, PUBLISH in both directions: QoS 0/1/2 flows, authorization, routing rules.

MQTT 5 §3.3-§3.7 and §4.3-§4.4 (QoS flows), §4.8 is in ``test_core_shared.py``.
"""

from __future__ import annotations

import pytest
from brokerkit import DenyingPolicy, FakeLink, Harness

from bastion.mqtt.packets import (
    Properties,
    Puback,
    Pubcomp,
    Pubrec,
    Pubrel,
    Subscription,
)
from bastion.mqtt.reason_codes import ReasonCode
from bastion.security.audit import SecurityEventKind


def test_qos0_is_forwarded_without_acknowledgement() -> None:
    h = Harness()
    sub = h.connect("sub")
    sub.subscribe("a/+")
    pub = h.connect("pub")
    pub.publish("a/b", b"hello")
    assert pub.take() == []
    [msg] = sub.take_publishes()
    assert (msg.topic, msg.payload, msg.qos, msg.retain, msg.packet_id) == (
        "a/b",
        b"hello",
        0,
        False,
        None,
    )


def test_qos1_routes_then_acknowledges() -> None:
    h = Harness()
    sub = h.connect("sub")
    sub.subscribe("a/b", qos=1)
    pub = h.connect("pub")
    packet_id = pub.publish("a/b", b"one", qos=1)
    assert pub.take() == [Puback(packet_id or 0, ReasonCode.SUCCESS)]
    [msg] = sub.take_publishes()
    assert msg.qos == 1 and msg.packet_id is not None


def test_v5_puback_says_when_nobody_matched() -> None:
    h = Harness()
    pub = h.connect("pub")
    pub.publish("nobody/here", qos=1, packet_id=7)
    assert pub.take() == [Puback(7, ReasonCode.NO_MATCHING_SUBSCRIBERS)]
    pub.publish("nobody/here", qos=2, packet_id=8)
    assert pub.take() == [Pubrec(8, ReasonCode.NO_MATCHING_SUBSCRIBERS)]
    old = h.connect("old", version=4)
    old.publish("nobody/here", qos=1, packet_id=9)
    assert old.take() == [Puback(9)]


def test_qos2_inbound_is_routed_once_and_completed_by_pubrel() -> None:
    h = Harness()
    sub = h.connect("sub")
    sub.subscribe("a/b", qos=2)
    pub = h.connect("pub")
    pub.publish("a/b", b"once", qos=2, packet_id=5)
    assert pub.take() == [Pubrec(5)]
    assert len(sub.take_publishes()) == 1
    # The client did not see PUBREC and sends the PUBLISH again: no second delivery.
    pub.publish("a/b", b"once", qos=2, packet_id=5, dup=True)
    assert pub.take() == [Pubrec(5)]
    assert sub.take() == []
    pub.send(Pubrel(5))
    assert pub.take() == [Pubcomp(5)]
    # After PUBCOMP the packet id is free: the same id carries a new message.
    pub.publish("a/b", b"again", qos=2, packet_id=5)
    assert [p.payload for p in sub.take_publishes()] == [b"again"]


def test_pubrel_for_unknown_packet_id() -> None:
    h = Harness()
    v5 = h.connect("v5")
    v5.send(Pubrel(42))
    assert v5.take() == [Pubcomp(42, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)]
    v311 = h.connect("v311", version=4)
    v311.send(Pubrel(42))
    assert v311.take() == [Pubcomp(42)]


def test_inbound_qos2_state_survives_reconnect() -> None:
    h = Harness()
    sub = h.connect("sub")
    sub.subscribe("a/b", qos=2)
    pub = h.connect("pub", clean=False, expiry=60)
    pub.publish("a/b", b"m", qos=2, packet_id=3)
    pub.drop()
    again = h.connect("pub", clean=False, expiry=60)
    again.publish("a/b", b"m", qos=2, packet_id=3, dup=True)
    assert again.take() == [Pubrec(3)]
    again.send(Pubrel(3))
    assert again.take() == [Pubcomp(3)]
    assert len(sub.take_publishes()) == 1


def test_outbound_qos1_flow() -> None:
    h = Harness()
    sub = h.connect("sub")
    sub.subscribe("t", qos=1)
    h.connect("pub").publish("t", b"m", qos=1)
    [msg] = sub.take_publishes()
    assert msg.qos == 1 and msg.dup is False
    assert msg.packet_id in sub.live.state.outbox.inflight
    sub.send(Puback(msg.packet_id or 0))
    assert not sub.live.state.outbox.inflight
    sub.send(Puback(999))  # unknown: ignored
    assert sub.take() == [] and not sub.link.closed


def test_outbound_qos2_flow() -> None:
    h = Harness()
    sub = h.connect("sub")
    sub.subscribe("t", qos=2)
    h.connect("pub").publish("t", b"m", qos=2)
    [msg] = sub.take_publishes()
    pid = msg.packet_id or 0
    sub.send(Pubcomp(pid))  # before PUBREC: ignored
    assert pid in sub.live.state.outbox.inflight
    sub.send(Pubrec(pid))
    assert sub.take() == [Pubrel(pid)]
    sub.send(Pubcomp(pid))
    assert not sub.live.state.outbox.inflight


def test_pubrec_with_error_ends_the_flow() -> None:
    h = Harness()
    sub = h.connect("sub")
    sub.subscribe("t", qos=2)
    h.connect("pub").publish("t", qos=2)
    [msg] = sub.take_publishes()
    sub.send(Pubrec(msg.packet_id or 0, ReasonCode.QUOTA_EXCEEDED))
    assert sub.take() == []
    assert not sub.live.state.outbox.inflight


def test_pubrec_for_unknown_packet_id() -> None:
    h = Harness()
    v5 = h.connect("v5")
    v5.send(Pubrec(77))
    assert v5.take() == [Pubrel(77, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)]
    v311 = h.connect("v311", version=4)
    v311.send(Pubrec(77))
    assert v311.take() == []


def test_qos_above_maximum_disconnects() -> None:
    h = Harness(max_qos=1)
    v5 = h.connect("v5")
    v5.publish("t", qos=2)
    assert v5.link.closes == [ReasonCode.QOS_NOT_SUPPORTED]
    v311 = h.connect("v311", version=4)
    v311.publish("t", qos=2)
    assert v311.link.closes == [None]


def test_retain_when_unavailable_disconnects() -> None:
    h = Harness(retain_available=False)
    client = h.connect("c")
    client.publish("t", retain=True)
    assert client.link.closes == [ReasonCode.RETAIN_NOT_SUPPORTED]
    assert len(h.broker.retained) == 0


def test_unauthorized_publish() -> None:
    h = Harness(DenyingPolicy(publish=("secret",)))
    sub = h.connect("sub")
    sub.subscribe("#", qos=2)
    v5 = h.connect("v5")
    v5.publish("secret", qos=1, packet_id=1)
    [ack] = v5.take()
    assert isinstance(ack, Puback) and ack.reason_code == ReasonCode.NOT_AUTHORIZED
    assert ack.properties.reason_string
    v5.publish("secret", qos=2, packet_id=2)
    [rec] = v5.take()
    assert isinstance(rec, Pubrec) and rec.reason_code == ReasonCode.NOT_AUTHORIZED
    assert 2 not in v5.live.state.inbound_qos2  # a failed PUBREC ends the flow
    # MQTT 3.1.1 has no way to say no: acknowledged normally, then dropped.
    v311 = h.connect("v311", version=4)
    v311.publish("secret", qos=1, packet_id=3)
    assert v311.take() == [Puback(3)]
    v311.publish("secret", qos=2, packet_id=4)
    assert v311.take() == [Pubrec(4)]
    v311.send(Pubrel(4))
    assert v311.take() == [Pubcomp(4)]
    assert sub.take() == []
    # Audited: every refusal counted, the first of each client's episode reported.
    assert h.stats.acl_denied == 4
    denied = [e for e in h.events.events if e.kind == SecurityEventKind.ACL_DENIED]
    assert [(e.client_id, e.topic) for e in denied] == [("v5", "secret"), ("v311", "secret")]


def test_clients_may_not_publish_to_sys() -> None:
    h = Harness()
    sub = h.connect("sub")
    sub.subscribe("$SYS/#")
    client = h.connect("c")
    client.publish("$SYS/broker/uptime", b"fake", qos=1, packet_id=1)
    assert client.take() == [
        Puback(1, ReasonCode.NOT_AUTHORIZED, Properties(reason_string="not authorized"))
    ]
    assert sub.take() == []


def test_overlapping_subscriptions_give_one_copy_with_every_identifier() -> None:
    h = Harness()
    sub = h.connect("sub")
    sub.subscribe(Subscription("a/+", qos=0), identifier=1)
    sub.subscribe(Subscription("a/#", qos=2), identifier=2)
    sub.subscribe(Subscription("a/b", qos=1))  # no identifier
    h.connect("pub").publish("a/b", b"m", qos=2)
    [msg] = sub.take_publishes()
    assert msg.qos == 2  # the highest of the matching subscriptions
    assert sorted(msg.properties.subscription_identifiers) == [1, 2]


@pytest.mark.parametrize("strong", ["a/#", "a/b"])
def test_overlapping_subscriptions_merge_qos_and_retain_whatever_the_order(strong: str) -> None:
    h = Harness()
    sub = h.connect("sub")
    weak = "a/b" if strong == "a/#" else "a/#"
    sub.subscribe(Subscription(weak, qos=0))
    sub.subscribe(Subscription(strong, qos=2, retain_as_published=True))
    h.connect("pub").publish("a/b", qos=2, retain=True)
    [msg] = sub.take_publishes()
    assert (msg.qos, msg.retain) == (2, True)


def test_delivered_qos_is_the_lower_of_message_and_subscription() -> None:
    h = Harness()
    sub = h.connect("sub")
    sub.subscribe("low", qos=0)
    sub.subscribe("high", qos=2)
    pub = h.connect("pub")
    pub.publish("low", qos=2)
    pub.publish("high", qos=1)
    assert [(m.topic, m.qos) for m in sub.take_publishes()] == [("low", 0), ("high", 1)]


def test_no_local_skips_own_messages() -> None:
    h = Harness()
    client = h.connect("c")
    client.subscribe(Subscription("t", no_local=True))
    client.publish("t", b"mine")
    assert client.take() == []
    h.connect("other").publish("t", b"theirs")
    assert [m.payload for m in client.take_publishes()] == [b"theirs"]
    # Without no_local, a client receives its own messages.
    echo = h.connect("echo")
    echo.subscribe("e")
    echo.publish("e", b"back")
    assert [m.payload for m in echo.take_publishes()] == [b"back"]


def test_no_local_applies_per_subscription() -> None:
    h = Harness()
    client = h.connect("c")
    client.subscribe(Subscription("t", no_local=True), identifier=1)
    client.subscribe(Subscription("#"), identifier=2)
    client.publish("t", b"mine")
    [msg] = client.take_publishes()
    assert msg.properties.subscription_identifiers == (2,)


def test_retain_flag_on_forwarding_follows_retain_as_published() -> None:
    h = Harness()
    plain = h.connect("plain")
    plain.subscribe("t")
    rap = h.connect("rap")
    rap.subscribe(Subscription("t", retain_as_published=True))
    h.connect("pub").publish("t", b"r", retain=True)
    assert [m.retain for m in plain.take_publishes()] == [False]
    assert [m.retain for m in rap.take_publishes()] == [True]


def test_may_receive_is_checked_per_subscriber() -> None:
    h = Harness(DenyingPolicy(receive=(("blocked", "t"),)))
    blocked = h.connect("blocked")
    blocked.subscribe("t")
    allowed = h.connect("allowed")
    allowed.subscribe("t")
    h.connect("pub").publish("t")
    assert blocked.take() == []
    assert len(allowed.take_publishes()) == 1


def test_message_properties_pass_through() -> None:
    h = Harness()
    sub = h.connect("sub")
    sub.subscribe("req")
    props = Properties(
        payload_format_indicator=1,
        content_type="text/plain",
        response_topic="resp/1",
        correlation_data=b"\x01\x02",
        user_properties=(("k", "v"), ("k", "w")),
        topic_alias=3,
    )
    h.connect("pub").publish("req", b"body", properties=props)
    [msg] = sub.take_publishes()
    assert msg.properties == Properties(
        payload_format_indicator=1,
        content_type="text/plain",
        response_topic="resp/1",
        correlation_data=b"\x01\x02",
        user_properties=(("k", "v"), ("k", "w")),
    )


def test_v311_subscriber_gets_no_properties() -> None:
    h = Harness()
    sub = h.connect("sub", version=4)
    sub.subscribe("t")
    props = Properties(user_properties=(("k", "v"),), message_expiry_interval=30)
    h.connect("pub").publish("t", properties=props)
    [msg] = sub.take_publishes()
    assert msg.properties == Properties()


def test_message_expiry_interval_counts_down() -> None:
    h = Harness()
    sub = h.connect("sub", clean=False, expiry=600)
    sub.subscribe("t", qos=1)
    sub.drop()
    pub = h.connect("pub")
    pub.publish("t", b"soon", qos=1, properties=Properties(message_expiry_interval=30))
    pub.publish("t", b"later", qos=1, properties=Properties(message_expiry_interval=100))
    pub.publish("t", b"never", qos=1)
    h.advance(40)
    back = h.connect("sub", clean=False, expiry=600)
    msgs = back.take_publishes()
    assert [m.payload for m in msgs] == [b"later", b"never"]  # "soon" expired in the queue
    assert msgs[0].properties.message_expiry_interval == 60
    assert msgs[1].properties.message_expiry_interval is None
    assert h.broker.stats.publish_messages_dropped == 1


def test_publish_too_large_for_the_client_is_treated_as_delivered() -> None:
    h = Harness()
    small = h.connect("small", link=FakeLink(max_publish_payload=4))
    small.subscribe("t", qos=1)
    pub = h.connect("pub")
    pub.publish("t", b"far too long", qos=1)
    assert small.take() == []
    assert not small.live.state.outbox.inflight  # not kept for redelivery
    pub.publish("t", b"ok", qos=1)
    assert [m.payload for m in small.take_publishes()] == [b"ok"]
    assert h.broker.stats.publish_messages_dropped == 1


def test_packet_ids_skip_ids_in_use() -> None:
    h = Harness()
    sub = h.connect("sub")
    sub.subscribe("t", qos=1)
    pub = h.connect("pub")
    for _ in range(3):
        pub.publish("t", qos=1)
    first = [m.packet_id for m in sub.take_publishes()]
    assert len(set(first)) == 3
    assert all(isinstance(p, int) and 1 <= p <= 0xFFFF for p in first)
    sub.send(Puback(first[1] or 0))
    pub.publish("t", qos=1)
    [msg] = sub.take_publishes()
    assert msg.packet_id not in (first[0], first[2])


def test_qos0_copies_share_a_packet_only_when_their_shape_is_the_same() -> None:
    """One Publish per (version, RETAIN, identifiers): equal copies are the same object,
    and each subscriber still gets exactly its own options."""
    h = Harness()
    old1 = h.connect("old1", version=4)
    old2 = h.connect("old2", version=4)
    new1 = h.connect("new1")
    new2 = h.connect("new2")
    tagged = h.connect("tagged")
    rap = h.connect("rap")
    for client in (old1, old2, new1, new2):
        client.subscribe("s/t")
    tagged.subscribe(Subscription("s/+"), identifier=9)
    rap.subscribe(Subscription("s/#", retain_as_published=True))
    h.connect("pub").publish("s/t", b"v", retain=True)
    [o1], [o2], [n1], [n2], [t], [r] = (
        c.take_publishes() for c in (old1, old2, new1, new2, tagged, rap)
    )
    assert o1 is o2 and n1 is n2
    assert o1 is not n1
    assert (t.properties.subscription_identifiers, n1.properties.subscription_identifiers) == (
        (9,),
        (),
    )
    assert r.retain and not n1.retain and not o1.retain
    assert all(p.payload == b"v" and p.topic == "s/t" for p in (o1, n1, t, r))
