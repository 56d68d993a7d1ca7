"""Broker core, publisher backpressure: a live subscriber's filling queue holds its publishers.

A QoS 1/2 queue half full holds (stops reading from) the publishers that fill it, an eighth
full releases them; a hold lasts at most ``max_publisher_hold`` seconds, after which the
subscriber is lagging (holds nobody) for a while and its overflow is dropped as before.
"""

from __future__ import annotations

from brokerkit import Client, Harness

from bastion.broker.backpressure import LAGGING_COOLDOWN
from bastion.mqtt.packets import Properties

QUEUE = 8  # max_queued_messages: high water at 4 queued, low water at 1


def _setup(hold: float = 2.0) -> tuple[Harness, Client, Client]:
    h = Harness(max_queued_messages=QUEUE, max_publisher_hold=hold)
    sub = h.connect("sub", properties=Properties(receive_maximum=1))
    sub.subscribe("t", qos=1)
    pub = h.connect("pub")
    return h, sub, pub


def _fill(pub: Client, count: int, qos: int = 1) -> None:
    for i in range(count):
        pub.publish("t", str(i).encode(), qos=qos)


def _drain(sub: Client, count: int) -> None:
    for _ in range(count):
        [msg] = sub.take_publishes()
        sub.ack(msg)


def test_a_half_full_queue_holds_the_publisher_and_draining_releases_it() -> None:
    h, sub, pub = _setup()
    _fill(pub, 4)  # one in flight, three queued: below half
    assert pub.link.reading
    _fill(pub, 1)  # four queued: half full
    assert not pub.link.reading
    assert len(h.broker.router.backpressure) == 1
    _drain(sub, 3)  # one left queued (an eighth): released
    assert pub.link.reading
    assert pub.link.history.count("pause") == 1 and pub.link.history.count("resume") == 1
    assert len(h.broker.router.backpressure) == 0
    assert h.stats.messages_dropped_queue_full == 0


def test_a_hold_ends_after_max_hold_and_the_subscriber_then_lags() -> None:
    h, sub, pub = _setup()
    _fill(pub, 5)
    assert not pub.link.reading
    assert h.broker.tick(h.now) == h.now + 2.0  # the hold's deadline is a broker deadline
    h.advance(2.0)
    assert pub.link.reading
    outbox = sub.live.state.outbox
    assert outbox.lagging_until == h.now + LAGGING_COOLDOWN
    _fill(pub, 10)  # lagging: nobody is held, the overflow is dropped and counted
    assert pub.link.reading
    assert h.stats.messages_dropped_queue_full > 0
    h.advance(LAGGING_COOLDOWN)
    _drain(sub, 8)
    _fill(pub, 5)
    assert not pub.link.reading  # the cool-down is over: it holds publishers again


def test_a_subscriber_going_offline_releases_its_publishers() -> None:
    h = Harness(max_queued_messages=QUEUE, max_publisher_hold=2.0)
    sub = h.connect("sub", clean=False, expiry=600, properties=Properties(receive_maximum=1))
    sub.subscribe("t", qos=1)
    pub = h.connect("pub")
    _fill(pub, 5)
    assert not pub.link.reading
    sub.drop()
    assert pub.link.reading
    _fill(pub, 3)  # an offline queue holds nobody
    assert pub.link.reading


def test_a_held_publisher_that_disconnects_is_forgotten() -> None:
    h, _sub, pub = _setup()
    _fill(pub, 5)
    assert len(h.broker.router.backpressure) == 1
    pub.drop()
    assert len(h.broker.router.backpressure) == 0
    h.advance(10)  # no hold left to expire, nothing resumed on a closed link
    assert pub.link.history.count("resume") == 0


def test_a_publisher_is_never_held_by_its_own_subscription() -> None:
    h = Harness(max_queued_messages=QUEUE, max_publisher_hold=2.0)
    me = h.connect("me", properties=Properties(receive_maximum=1))
    me.subscribe("t", qos=1)
    _fill(me, 6)
    assert me.link.reading


def test_qos0_and_disabled_backpressure_never_hold() -> None:
    _h, _sub, pub = _setup()
    _fill(pub, 20, qos=0)
    assert pub.link.reading
    h2, _sub2, pub2 = _setup(hold=0.0)
    _fill(pub2, 20)
    assert pub2.link.reading and "pause" not in pub2.link.history
    assert h2.stats.messages_dropped_queue_full == 20 - 1 - QUEUE


def test_one_publisher_held_by_two_subscribers_waits_for_both() -> None:
    h, sub, pub = _setup()
    other = h.connect("other", properties=Properties(receive_maximum=1))
    other.subscribe("t", qos=1)
    _fill(pub, 5)
    assert not pub.link.reading
    _drain(sub, 4)
    assert not pub.link.reading  # "other" is still half full
    _drain(other, 4)
    assert pub.link.reading
