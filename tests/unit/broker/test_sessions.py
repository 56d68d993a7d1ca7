"""Unit tests of the broker core's building blocks: outbox, session registry, delayed wills,
load averages, and the message helpers.
"""

from __future__ import annotations

import math

import pytest

from bastion.broker.messages import (
    Delivery,
    Message,
    is_broker_topic,
    message_from_publish,
    message_from_will,
    outgoing_publish,
)
from bastion.broker.sessions import NEVER_EXPIRES, Outbox, SessionRegistry, SessionState
from bastion.broker.stats import BrokerStats, LoadAverage
from bastion.broker.subscriptions import SharedGroup
from bastion.broker.wills import WillScheduler
from bastion.mqtt.packets import Properties, Publish, Will
from bastion.security.policy import ClientIdentity


def message(payload: bytes = b"m", qos: int = 1, expires_at: float | None = None) -> Message:
    return Message("t", payload, qos, False, expires_at=expires_at)


def state(client_id: str, expiry: int = 60) -> SessionState:
    s = SessionState(client_id, ClientIdentity(client_id, None, "peer"), max_queued=10)
    s.expiry_interval = expiry
    return s


# -- Outbox ------------------------------------------------------------------------------


def test_outbox_allocates_distinct_ids_and_wraps() -> None:
    outbox = Outbox(max_queued=0)
    ids = [outbox.start(Delivery(message(), 1, False)).packet_id for _ in range(3)]
    assert ids == [1, 2, 3]
    outbox.finish(2)
    outbox._next_id = 0xFFFF
    assert outbox.start(Delivery(message(), 1, False)).packet_id == 0xFFFF
    assert outbox.start(Delivery(message(), 1, False)).packet_id == 2  # 1 and 3 in use
    assert list(outbox.inflight) == [1, 3, 0xFFFF, 2]


def test_outbox_queue_bound() -> None:
    outbox = Outbox(max_queued=2)
    assert outbox.enqueue(Delivery(message(b"1"), 1, False))
    assert outbox.enqueue(Delivery(message(b"2"), 1, False))
    assert not outbox.enqueue(Delivery(message(b"3"), 1, False))
    assert [d.message.payload for d in outbox.queue] == [b"1", b"2"]
    assert len(outbox) == 2


def test_outbox_counts_bytes_everywhere() -> None:
    outbox = Outbox(max_queued=10, max_queued_bytes=100, max_inflight_bytes=100)
    d = Delivery(message(b"x" * 9), 1, False)  # topic "t": 10 bytes
    item = outbox.start(d)
    outbox.start(d)
    assert outbox.inflight_bytes == 20
    outbox.finish(item.packet_id)
    outbox.finish(item.packet_id)  # unknown now: nothing changes
    assert outbox.inflight_bytes == 10
    assert outbox.enqueue(d)
    assert outbox.enqueue(Delivery(message(b"y" * 9, expires_at=5.0), 1, False))
    assert outbox.queued_bytes == 20
    assert outbox.purge_expired(10.0) == 1
    assert outbox.queued_bytes == 10
    assert outbox.dequeue() is d
    assert outbox.queued_bytes == 0


def test_outbox_queue_byte_bound() -> None:
    outbox = Outbox(max_queued=10, max_queued_bytes=25)
    ten = Delivery(message(b"x" * 9), 1, False)
    assert outbox.enqueue(ten)
    assert outbox.enqueue(ten)
    assert not outbox.enqueue(ten)  # 30 > 25
    assert outbox.enqueue(Delivery(message(b"xxxx"), 1, False))  # 25: fits exactly


def test_outbox_room_counts_messages_and_bytes() -> None:
    outbox = Outbox(max_queued=10, max_inflight_bytes=15)
    assert outbox.has_room(2)
    outbox.start(Delivery(message(b"x" * 99), 1, False))  # 100 bytes: alone is fine
    assert not outbox.has_room(2)
    assert not Outbox(max_queued=0).has_room(0)


def test_outbox_take_shared_passes_attempts_and_keeps_byte_counts() -> None:
    group = SharedGroup("g", "t")
    outbox = Outbox(max_queued=10)
    item = outbox.start(Delivery(message(b"shared"), 1, False, group=group), attempts=2)
    outbox.enqueue(Delivery(message(b"queued"), 1, False, group=group))
    offered: list[Delivery] = []

    def move(delivery: Delivery) -> bool:
        offered.append(delivery)
        return True

    outbox.take_shared(move)
    assert [d.attempts for d in offered] == [item.attempts, 0]
    assert (outbox.inflight_bytes, outbox.queued_bytes, len(outbox)) == (0, 0, 0)


def test_outbox_take_shared_offers_unreleased_group_copies_in_order() -> None:
    group = SharedGroup("g", "t")
    outbox = Outbox(max_queued=10)
    outbox.start(Delivery(message(b"plain"), 1, False))
    outbox.start(Delivery(message(b"shared-inflight"), 1, False, group=group))
    released = outbox.start(Delivery(message(b"shared-released"), 2, False, group=group))
    released.released = True
    outbox.enqueue(Delivery(message(b"shared-queued"), 1, False, group=group))
    outbox.enqueue(Delivery(message(b"kept"), 1, False, group=group))
    offered: list[bytes] = []

    def move(delivery: Delivery) -> bool:
        offered.append(delivery.message.payload)
        return delivery.message.payload != b"kept"

    outbox.take_shared(move)
    assert offered == [b"shared-inflight", b"shared-queued", b"kept"]
    assert [i.delivery.message.payload for i in outbox.inflight.values()] == [
        b"plain",
        b"shared-released",
    ]
    assert [d.message.payload for d in outbox.queue] == [b"kept"]


# -- SessionRegistry ---------------------------------------------------------------------


def test_registry_expires_offline_sessions_in_deadline_order() -> None:
    registry = SessionRegistry()
    a, b, forever = state("a", 30), state("b", 10), state("f", NEVER_EXPIRES)
    for s in (a, b, forever):
        registry.add(s)
        registry.go_offline(s, 100.0)
    assert forever.expires_at is None
    assert registry.next_deadline() == 110.0
    assert registry.pop_expired(109.0) == []
    assert registry.pop_expired(130.0) == [b, a]
    assert registry.next_deadline() is None


def test_registry_ignores_stale_deadlines() -> None:
    registry = SessionRegistry()
    s = state("a", 10)
    registry.add(s)
    registry.go_offline(s, 0.0)
    s.expires_at = None  # back online, as the core does when binding a connection
    assert registry.next_deadline() is None
    registry.go_offline(s, 50.0)
    assert registry.pop_expired(20.0) == []
    assert registry.pop_expired(60.0) == [s]
    registry.remove(s)
    assert "a" not in registry and len(registry) == 0


def test_registry_compacts_its_heap() -> None:
    registry = SessionRegistry()
    s = state("a", 1000)
    registry.add(s)
    for i in range(500):
        registry.go_offline(s, float(i))
    assert len(registry._deadlines) <= 2 * len(registry) + 65
    assert registry.next_deadline() == 1499.0


# -- WillScheduler -----------------------------------------------------------------------


def test_will_scheduler() -> None:
    wills = WillScheduler()
    w1, w2 = Will("w/1", b"1"), Will("w/2", b"2")
    wills.schedule("a", w1, 20.0)
    wills.schedule("b", w2, 10.0)
    assert wills.next_deadline() == 10.0
    assert wills.pop_due(15.0) == [("b", w2)]
    assert wills.cancel("a") and not wills.cancel("a")
    assert wills.next_deadline() is None
    wills.schedule("a", w1, 30.0)
    wills.schedule("a", w2, 40.0)  # rescheduled: the newer one wins
    assert wills.pop_due(35.0) == []
    assert wills.take("a") == w2 and wills.take("a") is None
    wills.schedule("c", w1, 5.0)
    assert wills.take_all() == [("c", w1)] and len(wills) == 0


# -- stats -------------------------------------------------------------------------------


def test_load_average_converges_to_the_rate() -> None:
    load = LoadAverage(0, 0.0)
    count = 0
    for step in range(1, 200):
        count += 10  # 10 per 10 s = 60 per minute
        load.update(count, step * 10.0)
    assert load.values[0] == pytest.approx(60.0)
    assert load.values[2] == pytest.approx(60.0, rel=0.2)
    load.update(count, 1990.0)  # no time passed: unchanged
    assert load.values[0] == pytest.approx(60.0)


def test_load_average_first_step() -> None:
    load = LoadAverage(0, 0.0)
    load.update(60, 60.0)
    assert load.values[0] == pytest.approx(60.0 * (1 - math.exp(-1)))


def test_stats_track_the_maximum() -> None:
    stats = BrokerStats()
    stats.client_connected()
    stats.client_connected()
    stats.clients_connected -= 1
    stats.client_connected()
    assert (stats.clients_connected, stats.clients_maximum, stats.connections_total) == (2, 2, 3)


# -- messages ----------------------------------------------------------------------------


def test_broker_topics() -> None:
    assert is_broker_topic("$SYS")
    assert is_broker_topic("$SYS/broker/uptime")
    assert not is_broker_topic("$SYSTEM/x")
    assert not is_broker_topic("a/$SYS")


def test_message_from_publish_strips_hop_properties_and_sets_deadline() -> None:
    props = Properties(topic_alias=4, subscription_identifiers=(1,), message_expiry_interval=9)
    msg = message_from_publish(Publish("t", b"p", 1, True, False, 3, props), "c", 100.0)
    assert msg.properties == Properties(message_expiry_interval=9)
    assert (msg.expires_at, msg.origin, msg.retain) == (109.0, "c", True)
    assert not msg.is_expired(108.9) and msg.is_expired(109.0)
    assert msg.remaining_expiry(100.5) == 9  # rounded up: never reported as 0


def test_message_from_will_drops_the_will_delay() -> None:
    will = Will("w", b"x", 1, True, Properties(will_delay_interval=5, content_type="a"))
    msg = message_from_will(will, "c", 0.0)
    assert msg.properties == Properties(content_type="a")
    assert (msg.qos, msg.retain, msg.expires_at) == (1, True, None)


def test_outgoing_publish() -> None:
    msg = Message("t", b"p", 2, True, Properties(message_expiry_interval=10), 110.0, "c")
    delivery = Delivery(msg, 1, False, (3, 4))
    packet = outgoing_publish(delivery, 9, 5, 103.0, dup=True)
    assert packet == Publish(
        "t",
        b"p",
        1,
        False,
        True,
        9,
        Properties(message_expiry_interval=7, subscription_identifiers=(3, 4)),
    )
    assert outgoing_publish(delivery, 9, 4, 103.0).properties == Properties()
