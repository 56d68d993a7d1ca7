"""Broker core, per-session byte bounds: ``max_queued_bytes`` and ``max_inflight_bytes``.

A copy counts its payload plus its topic. Only QoS 1/2 copies are queued; a full queue
drops the newest copy (after expired ones), counts it, and logs and reports the overflow
once per episode: from the first drop until a copy fits again.
"""

from __future__ import annotations

from brokerkit import Harness

from bastion.mqtt.packets import Puback
from bastion.security.audit import SecurityEventKind

TEN = b"123456789"  # with topic "t": 10 bytes a copy


def test_queue_is_bounded_in_bytes() -> None:
    h = Harness(max_queued_bytes=25)
    sub = h.connect("sub", clean=False, expiry=600)
    sub.subscribe("t", qos=1)
    sub.drop()
    pub = h.connect("pub")
    for _ in range(3):
        pub.publish("t", TEN, qos=1)
    outbox = h.broker.sessions.get("sub")
    assert outbox is not None
    assert (len(outbox.outbox.queue), outbox.outbox.queued_bytes) == (2, 20)
    assert h.stats.messages_dropped_queue_full == 1
    assert h.stats.publish_messages_dropped == 1
    back = h.connect("sub", clean=False, expiry=600)
    assert len(back.take_publishes()) == 2
    assert back.live.state.outbox.queued_bytes == 0


def test_small_copies_still_fit_after_a_big_one_was_dropped() -> None:
    h = Harness(max_queued_bytes=25)
    sub = h.connect("sub", clean=False, expiry=600)
    sub.subscribe("t", qos=1)
    sub.drop()
    pub = h.connect("pub")
    pub.publish("t", b"x" * 30, qos=1)
    pub.publish("t", TEN, qos=1)
    back = h.connect("sub", clean=False, expiry=600)
    assert [len(m.payload) for m in back.take_publishes()] == [9]


def test_zero_queued_bytes_queues_nothing() -> None:
    h = Harness(max_queued_bytes=0)
    sub = h.connect("sub", clean=False, expiry=600)
    sub.subscribe("t", qos=1)
    sub.drop()
    h.connect("pub").publish("t", qos=1)
    assert h.connect("sub", clean=False, expiry=600).take() == []


def test_queue_overflow_is_reported_once_per_episode() -> None:
    h = Harness(max_queued_messages=2)
    sub = h.connect("sub", clean=False, expiry=600)
    sub.subscribe("t", qos=1)
    sub.drop()
    pub = h.connect("pub")
    for _ in range(6):
        pub.publish("t", TEN, qos=1)
    assert h.stats.messages_dropped_queue_full == 4
    [event] = h.events.events
    assert (event.kind, event.client_id) == (SecurityEventKind.LIMIT_EXCEEDED, "sub")
    assert "queue_full" in event.detail
    assert h.log.events() == ["security.queue_full"]
    # The episode outlives the publisher's connection and the subscriber's absence ...
    back = h.connect("sub", clean=False, expiry=600)
    for msg in back.take_publishes():
        back.ack(msg)
    # ... and ends when a copy fits again, with a summary of what it cost.
    pub.publish("t", TEN, qos=1)
    assert h.log.lines[-1][1:] == (
        "security.episode_ended",
        {"defence": "queue_full", "client_id": "sub", "hits": 4},
    )
    back.drop()
    for _ in range(3):
        pub.publish("t", TEN, qos=1)
    assert len(h.events.events) == 2  # a new episode


def test_inflight_is_bounded_in_bytes() -> None:
    h = Harness(max_inflight_bytes=15)
    sub = h.connect("sub")
    sub.subscribe("t", qos=1)
    pub = h.connect("pub")
    for _ in range(3):
        pub.publish("t", TEN, qos=1)
    first = sub.take_publishes()
    assert len(first) == 2  # 0 and then 10 bytes in flight: below 15; 20 is not
    outbox = sub.live.state.outbox
    assert (outbox.inflight_bytes, len(outbox.queue)) == (20, 1)
    sub.send(Puback(first[0].packet_id or 0))
    assert len(sub.take_publishes()) == 1
    assert outbox.inflight_bytes == 20


def test_a_message_larger_than_the_inflight_bound_still_goes_alone() -> None:
    h = Harness(max_inflight_bytes=4)
    sub = h.connect("sub")
    sub.subscribe("t", qos=2)
    pub = h.connect("pub")
    pub.publish("t", b"x" * 100, qos=2)
    pub.publish("t", b"y" * 100, qos=2)
    [msg] = sub.take_publishes()
    assert msg.payload == b"x" * 100
    sub.ack(msg)
    assert [m.payload for m in sub.take_publishes()] == [b"y" * 100]
