"""Broker core, the outbound window and queues: Receive Maximum, offline queueing, resume.

MQTT 5 §4.9 (flow control), §4.4 (redelivery with DUP on resume, PUBREL resend) and the
server's bounds (``max_inflight_messages``, ``max_queued_messages``).
"""

from __future__ import annotations

from dataclasses import replace

from brokerkit import Harness

from bastion.mqtt.packets import Disconnect, Properties, Puback, Pubcomp, Pubrec, Pubrel


def test_window_is_the_clients_receive_maximum() -> None:
    h = Harness(max_inflight_messages=32)
    sub = h.connect("sub", properties=Properties(receive_maximum=2))
    assert sub.live.window == 2
    sub.subscribe("t", qos=1)
    pub = h.connect("pub")
    for i in range(5):
        pub.publish("t", str(i).encode(), qos=1)
    first = sub.take_publishes()
    assert [m.payload for m in first] == [b"0", b"1"]
    assert len(sub.live.state.outbox.queue) == 3
    sub.send(Puback(first[0].packet_id or 0))
    assert [m.payload for m in sub.take_publishes()] == [b"2"]


def test_window_is_capped_by_max_inflight_messages() -> None:
    h = Harness(max_inflight_messages=3)
    assert h.connect("a", properties=Properties(receive_maximum=100)).live.window == 3
    assert h.connect("b", version=4).live.window == 3


def test_qos0_is_not_held_back_by_a_full_window() -> None:
    h = Harness(max_inflight_messages=1)
    sub = h.connect("sub")
    sub.subscribe("t", qos=1)
    pub = h.connect("pub")
    pub.publish("t", b"q1", qos=1)
    pub.publish("t", b"q1 again", qos=1)
    pub.publish("t", b"q0", qos=0)
    assert [m.payload for m in sub.take_publishes()] == [b"q1", b"q0"]


def test_queued_messages_keep_their_order() -> None:
    h = Harness(max_inflight_messages=1)
    sub = h.connect("sub")
    sub.subscribe("t", qos=2)
    pub = h.connect("pub")
    for i in range(4):
        pub.publish("t", str(i).encode(), qos=2)
    seen: list[bytes] = []
    for _ in range(4):
        [msg] = sub.take_publishes()
        seen.append(msg.payload)
        sub.ack(msg)
    assert seen == [b"0", b"1", b"2", b"3"]


def test_offline_session_queues_qos1_and_qos2_but_not_qos0() -> None:
    h = Harness()
    sub = h.connect("sub", clean=False, expiry=600)
    sub.subscribe("t", qos=2)
    sub.disconnect()
    pub = h.connect("pub")
    pub.publish("t", b"zero", qos=0)
    pub.publish("t", b"one", qos=1)
    pub.publish("t", b"two", qos=2)
    back = h.connect("sub", clean=False, expiry=600)
    msgs = back.take_publishes()
    assert [(m.payload, m.qos, m.dup) for m in msgs] == [(b"one", 1, False), (b"two", 2, False)]


def test_queue_is_bounded_and_drops_are_counted() -> None:
    h = Harness(max_queued_messages=3)
    sub = h.connect("sub", clean=False, expiry=600)
    sub.subscribe("t", qos=1)
    sub.drop()
    pub = h.connect("pub")
    for i in range(5):
        pub.publish("t", str(i).encode(), qos=1)
    assert h.broker.stats.publish_messages_dropped == 2
    back = h.connect("sub", clean=False, expiry=600)
    assert [m.payload for m in back.take_publishes()] == [b"0", b"1", b"2"]


def test_expired_messages_make_room_in_a_full_queue() -> None:
    h = Harness(max_queued_messages=2)
    sub = h.connect("sub", clean=False, expiry=600)
    sub.subscribe("t", qos=1)
    sub.drop()
    pub = h.connect("pub")
    short = Properties(message_expiry_interval=5)
    pub.publish("t", b"old-1", qos=1, properties=short)
    pub.publish("t", b"old-2", qos=1, properties=short)
    h.advance(10)
    pub.publish("t", b"new", qos=1)
    assert h.broker.stats.publish_messages_dropped == 2  # the expired ones, not "new"
    back = h.connect("sub", clean=False, expiry=600)
    assert [m.payload for m in back.take_publishes()] == [b"new"]


def test_resume_resends_inflight_with_dup_then_drains_queue() -> None:
    h = Harness(max_inflight_messages=2)
    sub = h.connect("sub", clean=False, expiry=600)
    sub.subscribe("t", qos=2)
    pub = h.connect("pub")
    for i in range(4):
        pub.publish("t", str(i).encode(), qos=2)
    first = sub.take_publishes()
    assert [m.payload for m in first] == [b"0", b"1"]
    # The first message got as far as PUBREC/PUBREL; the second was never acknowledged.
    sub.send(Pubrec(first[0].packet_id or 0))
    assert sub.take() == [Pubrel(first[0].packet_id or 0)]
    sub.drop()
    back = h.connect("sub", clean=False, expiry=600)
    assert back.connack.session_present
    resent = back.take()
    assert resent[0] == Pubrel(first[0].packet_id or 0)  # PUBREL, not the PUBLISH again
    assert resent[1] == replace(first[1], dup=True)  # same packet id, DUP set
    assert len(resent) == 2  # the window is full: the queue waits
    back.send(Pubcomp(first[0].packet_id or 0))
    assert [m.payload for m in back.take_publishes()] == [b"2"]


def test_v311_persistent_session_resume() -> None:
    h = Harness()
    sub = h.connect("sub", version=4, clean=False)
    sub.subscribe("t", qos=1)
    h.connect("pub").publish("t", b"m", qos=1)
    [msg] = sub.take_publishes()
    sub.drop()
    back = h.connect("sub", version=4, clean=False)
    assert back.connack.session_present
    [again] = back.take_publishes()
    assert (again.payload, again.dup, again.packet_id) == (b"m", True, msg.packet_id)


def test_expired_qos1_inflight_is_not_resent() -> None:
    h = Harness()
    sub = h.connect("sub", clean=False, expiry=600)
    sub.subscribe("t", qos=1)
    h.connect("pub").publish("t", qos=1, properties=Properties(message_expiry_interval=5))
    assert len(sub.take_publishes()) == 1
    sub.drop()
    h.advance(10)
    back = h.connect("sub", clean=False, expiry=600)
    assert back.take() == []
    assert not back.live.state.outbox.inflight


def test_session_expires_after_its_interval() -> None:
    h = Harness()
    sub = h.connect("sub", clean=False, expiry=30)
    sub.subscribe("t", qos=1)
    sub.drop()
    assert h.broker.stats.clients_disconnected == 1
    assert h.advance(10) == h.now + 20  # the next deadline is the session's expiry
    assert "sub" in h.broker.sessions
    h.advance(20)
    assert "sub" not in h.broker.sessions
    assert h.broker.stats.subscriptions_count == 0
    assert h.broker.stats.clients_total == 0
    assert h.connect("sub", clean=False, expiry=30).connack.session_present is False


def test_reconnect_stops_the_expiry_clock() -> None:
    h = Harness()
    sub = h.connect("sub", clean=False, expiry=30)
    sub.drop()
    h.advance(20)
    back = h.connect("sub", clean=False, expiry=30)
    h.advance(20)
    assert "sub" in h.broker.sessions
    back.drop()
    h.advance(29)
    assert "sub" in h.broker.sessions
    h.advance(1)
    assert "sub" not in h.broker.sessions


def test_disconnect_may_change_the_session_expiry() -> None:
    h = Harness()
    client = h.connect("c", clean=False, expiry=30)
    client.disconnect(properties=Properties(session_expiry_interval=0))
    assert "c" not in h.broker.sessions
    longer = h.connect("d", clean=False, expiry=30)
    longer.disconnect(properties=Properties(session_expiry_interval=300))
    h.advance(100)
    assert "d" in h.broker.sessions


def test_disconnect_cannot_set_expiry_when_connect_had_zero() -> None:
    h = Harness()
    client = h.connect("c")
    client.send(Disconnect(0, Properties(session_expiry_interval=60)))
    assert client.link.closes == [0x82]
    client.drop()
    assert "c" not in h.broker.sessions


def test_never_expiring_session_has_no_deadline() -> None:
    h = Harness()
    client = h.connect("c", clean=False, expiry=0xFFFFFFFF)
    client.drop()
    assert h.advance(10**9) is None
    assert "c" in h.broker.sessions
