"""Broker core, shared subscriptions (MQTT 5 §4.8.2): one member per message, round-robin,
offline members' queues, and redistribution when the chosen member goes away.
"""

from __future__ import annotations

from brokerkit import Client, DenyingPolicy, Harness

from bastion.mqtt.packets import Pubrec, Pubrel, Subscription


def payloads(client: Client) -> list[bytes]:
    return [m.payload for m in client.take_publishes()]


def backlog(h: Harness, client_id: str) -> int:
    """How many copies wait in the session's outbox (inflight + queued)."""
    state = h.broker.sessions.get(client_id)
    assert state is not None
    return len(state.outbox)


def members(h: Harness, *names: str, qos: int = 1, expiry: int = 600) -> list[Client]:
    clients = []
    for name in names:
        client = h.connect(name, clean=False, expiry=expiry)
        client.subscribe(Subscription("$share/g/jobs/+", qos=qos))
        clients.append(client)
    return clients


def test_each_message_goes_to_one_member_round_robin() -> None:
    h = Harness()
    a, b, c = members(h, "a", "b", "c", qos=0)
    pub = h.connect("pub")
    for i in range(6):
        pub.publish("jobs/x", str(i).encode())
    got = [payloads(a), payloads(b), payloads(c)]
    assert sorted(len(g) for g in got) == [2, 2, 2]
    assert sorted(p for g in got for p in g) == [str(i).encode() for i in range(6)]


def test_shared_and_normal_subscriptions_both_receive() -> None:
    h = Harness()
    [a] = members(h, "a")
    a.subscribe("jobs/#", identifier=4)
    h.connect("pub").publish("jobs/x", b"m", qos=1)
    msgs = a.take_publishes()
    assert len(msgs) == 2  # one for the normal subscription, one for the group


def test_shared_delivery_carries_that_subscriptions_identifier_and_qos() -> None:
    h = Harness()
    a = h.connect("a")
    a.subscribe(Subscription("$share/g/t", qos=1), identifier=7)
    h.connect("pub").publish("t", qos=2)
    [msg] = a.take_publishes()
    assert (msg.qos, msg.properties.subscription_identifiers) == (1, (7,))


def test_online_members_are_preferred_to_offline_ones() -> None:
    h = Harness()
    a, b = members(h, "a", "b")
    a.drop()
    pub = h.connect("pub")
    for _ in range(3):
        pub.publish("jobs/x", qos=1)
    assert len(payloads(b)) == 3
    assert backlog(h, "a") == 0


def test_all_members_offline_queue_at_one_of_them() -> None:
    h = Harness()
    a, b = members(h, "a", "b")
    a.drop()
    b.drop()
    pub = h.connect("pub")
    for i in range(4):
        pub.publish("jobs/x", str(i).encode(), qos=1)
    queued = [backlog(h, "a"), backlog(h, "b")]
    assert sum(queued) == 4
    assert queued == [2, 2]


def test_unacknowledged_messages_move_to_an_online_member_on_disconnect() -> None:
    h = Harness(max_inflight_messages=1)
    a, b = members(h, "a", "b")
    pub = h.connect("pub")
    for i in range(4):
        pub.publish("jobs/x", str(i).encode(), qos=1)
    got_a = payloads(a)
    [first_b] = b.take_publishes()
    assert len(got_a) == 1  # one each inflight, the rest queued
    a.drop()
    # a's inflight and queued copies go to b, whose window takes them one at a time.
    assert b.take() == []
    b.ack(first_b)
    received = [first_b.payload]
    for _ in range(3):
        [msg] = b.take_publishes()
        received.append(msg.payload)
        b.ack(msg)
    assert sorted(received) == [b"0", b"1", b"2", b"3"]
    assert backlog(h, "a") == 0


def test_without_another_online_member_copies_wait_for_the_client() -> None:
    h = Harness()
    a, b = members(h, "a", "b")
    b.drop()
    h.connect("pub").publish("jobs/x", b"m", qos=1)
    [msg] = a.take_publishes()
    a.drop()
    back = h.connect("a", clean=False, expiry=600)
    [again] = back.take_publishes()
    assert (again.payload, again.dup, again.packet_id) == (b"m", True, msg.packet_id)


def test_session_end_moves_copies_to_an_offline_member_queue() -> None:
    h = Harness()
    [a] = members(h, "a", expiry=10)
    [b] = members(h, "b", expiry=600)
    b.drop()
    h.connect("pub").publish("jobs/x", b"m", qos=1)
    assert payloads(a) == [b"m"]
    a.drop()
    assert backlog(h, "b") == 0
    h.advance(5)
    back = h.connect("b", clean=False, expiry=600)
    assert back.take() == []  # a is offline, not gone: its copy waits for it
    back.drop()
    h.advance(10)  # a's session ends while b is offline: its copy goes to b's queue
    assert "a" not in h.broker.sessions
    again = h.connect("b", clean=False, expiry=600)
    assert payloads(again) == [b"m"]


def test_released_qos2_copies_are_not_redistributed() -> None:
    h = Harness()
    a, b = members(h, "a", "b", qos=2)
    b.drop()
    h.connect("pub").publish("jobs/x", b"m", qos=2)
    [msg] = a.take_publishes()
    a.send(Pubrec(msg.packet_id or 0))
    assert a.take() == [Pubrel(msg.packet_id or 0)]
    again_b = h.connect("b", clean=False, expiry=600)
    a.drop()
    assert again_b.take() == []  # a already has the message; only PUBREL is pending


def test_members_that_may_not_receive_are_skipped() -> None:
    h = Harness(DenyingPolicy(receive=(("a", "jobs/x"),)))
    a, b = members(h, "a", "b", qos=0)
    pub = h.connect("pub")
    for _ in range(3):
        pub.publish("jobs/x")
    assert payloads(a) == []
    assert len(payloads(b)) == 3


def test_nobody_to_deliver_to_means_no_matching_subscribers() -> None:
    h = Harness(DenyingPolicy(receive=(("a", "jobs/x"),)))
    members(h, "a")
    pub = h.connect("pub")
    pub.publish("jobs/x", qos=1, packet_id=1)
    [ack] = pub.take()
    assert getattr(ack, "reason_code", None) == 0x10
