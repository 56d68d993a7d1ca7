"""Broker core, bounded redelivery: ``max_delivery_attempts`` closes the QoS 2 loop.

A subscriber whose client breaks on a message (the chapter's invalid-UTF-8 trap) drops the
connection before acknowledging; on every reconnect MQTT §4.4 asks for the resend, so an
unbounded broker loops forever. Bastion sends a flow at most N times (default 3), then drops
it for that client, counts it and reports a REDELIVERY_LIMIT security event.
"""

from __future__ import annotations

import pytest
from brokerkit import Client, Harness

from bastion.mqtt.packets import Publish, Pubrec, Pubrel
from bastion.security.audit import SecurityEventKind


def _fragile(h: Harness, qos: int = 2) -> Client:
    sub = h.connect("fragile", clean=False, expiry=3600)
    sub.subscribe("poison/#", qos=qos)
    return sub


def _reconnect(h: Harness) -> Client:
    return h.connect("fragile", clean=False, expiry=3600)


@pytest.mark.parametrize("qos", [1, 2])
def test_a_subscriber_that_disconnects_on_every_delivery_gets_it_three_times(qos: int) -> None:
    h = Harness()
    sub = _fragile(h, qos)
    steady = h.connect("steady")
    steady.subscribe("poison/#", qos=qos)
    pub = h.connect("pub")
    pub.publish("poison/1", b"boom", qos=qos)
    deliveries: list[Publish] = []
    for _ in range(10):
        deliveries.extend(sub.take_publishes())
        sub.drop()  # the client crashes before acknowledging
        sub = _reconnect(h)
    assert [(m.payload, m.dup) for m in deliveries] == [
        (b"boom", False),
        (b"boom", True),
        (b"boom", True),
    ]
    assert len({m.packet_id for m in deliveries}) == 1
    assert h.stats.messages_dropped_redelivery == 1
    assert h.stats.publish_messages_dropped == 1
    assert sub.live.state.outbox.inflight == {}
    [event] = h.events.events
    assert event.kind is SecurityEventKind.REDELIVERY_LIMIT
    assert (event.client_id, event.topic) == ("fragile", "poison/1")
    # The rest of the broker never noticed: the steady subscriber got it once.
    [copy] = steady.take_publishes()
    assert copy.payload == b"boom"


def test_after_the_drop_the_queue_flows_again() -> None:
    h = Harness(max_inflight_messages=1)
    sub = _fragile(h)
    pub = h.connect("pub")
    pub.publish("poison/1", b"boom", qos=2)
    pub.publish("poison/2", b"fine", qos=2)
    for _ in range(3):
        [msg] = sub.take_publishes()
        assert msg.payload == b"boom"
        sub.drop()
        sub = _reconnect(h)
    [msg] = sub.take_publishes()
    assert msg.payload == b"fine"
    sub.ack(msg)
    assert sub.take() == []


def test_acknowledged_messages_are_not_affected() -> None:
    h = Harness()
    sub = _fragile(h, qos=1)
    h.connect("pub").publish("poison/ok", b"fine", qos=1)
    sub.drop()
    sub = _reconnect(h)
    [msg] = sub.take_publishes()
    assert msg.dup
    sub.ack(msg)
    sub.drop()
    assert _reconnect(h).take() == []
    assert h.stats.messages_dropped_redelivery == 0
    assert h.events.events == []


def test_pubrel_resends_are_bounded_too_without_losing_the_message() -> None:
    h = Harness()
    sub = _fragile(h)
    h.connect("pub").publish("poison/1", b"boom", qos=2)
    [msg] = sub.take_publishes()
    assert msg.packet_id is not None
    sub.send(Pubrec(msg.packet_id))  # the client has the message now
    pubrels = [p for p in sub.take() if isinstance(p, Pubrel)]
    for _ in range(5):
        sub.drop()
        sub = _reconnect(h)
        pubrels.extend(p for p in sub.take() if isinstance(p, Pubrel))
    assert pubrels == [Pubrel(msg.packet_id)] * 3
    assert h.stats.messages_dropped_redelivery == 1
    assert h.stats.publish_messages_dropped == 0  # delivered: nothing was lost


def test_zero_attempts_means_no_bound() -> None:
    h = Harness(max_delivery_attempts=0)
    sub = _fragile(h)
    h.connect("pub").publish("poison/1", b"boom", qos=2)
    count = 0
    for _ in range(10):
        count += len(sub.take_publishes())
        sub.drop()
        sub = _reconnect(h)
    assert count == 10
    assert h.stats.messages_dropped_redelivery == 0


def test_one_attempt_means_never_resent() -> None:
    h = Harness(max_delivery_attempts=1)
    sub = _fragile(h, qos=1)
    h.connect("pub").publish("poison/1", b"boom", qos=1)
    assert len(sub.take_publishes()) == 1
    sub.drop()
    assert _reconnect(h).take() == []
    assert h.stats.messages_dropped_redelivery == 1


def test_several_flows_dropped_at_once_are_one_event() -> None:
    h = Harness()
    sub = _fragile(h)
    pub = h.connect("pub")
    for i in range(4):
        pub.publish(f"poison/{i}", b"boom", qos=2)
    for _ in range(3):
        assert len(sub.take_publishes()) == 4
        sub.drop()
        sub = _reconnect(h)
    assert sub.take() == []
    assert h.stats.messages_dropped_redelivery == 4
    [event] = h.events.events
    assert "4 PUBLISH" in event.detail


def test_shared_copies_carry_their_attempts_to_other_members() -> None:
    h = Harness(max_delivery_attempts=2)
    first = h.connect("m1", clean=False, expiry=3600)
    second = h.connect("m2", clean=False, expiry=3600)
    first.subscribe("$share/g/poison/#", qos=2)
    second.subscribe("$share/g/poison/#", qos=2)
    h.connect("pub").publish("poison/1", b"boom", qos=2)
    members = {"m1": first, "m2": second}
    [(got, other)] = [
        (cid, members["m2" if cid == "m1" else "m1"])
        for cid, client in members.items()
        if client.take_publishes()
    ]
    members[got].drop()  # attempt 1 failed: the copy moves to the other, online member
    [moved] = other.take_publishes()
    assert moved.payload == b"boom"
    other.drop()  # attempt 2 failed: nobody online, the copy waits with this member
    back = h.connect(other.live.client_id, clean=False, expiry=3600)
    assert back.take() == []  # two attempts made: dropped instead of a third
    assert h.stats.messages_dropped_redelivery == 1
