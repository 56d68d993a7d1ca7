"""Broker core, inbound QoS 2 bounds: ``max_awaiting_rel`` and ``awaiting_rel_timeout``.

An inbound QoS 2 message is routed on PUBLISH and its packet id kept until PUBREL
(§4.3.3, method B). A client that never sends PUBREL would hold those ids forever: their
number is capped (PUBREC 0x97 Quota exceeded on MQTT 5, disconnect on 3.1.1) and each is
forgotten after a timeout, run by ``Broker.tick``.
"""

from __future__ import annotations

from collections.abc import Sequence

from brokerkit import Harness

from bastion.mqtt.packets import Pubcomp, Pubrec, Pubrel
from bastion.mqtt.reason_codes import ReasonCode
from bastion.security.audit import SecurityEventKind


def _codes(packets: Sequence[object]) -> list[tuple[int, int]]:
    return [(p.packet_id, p.reason_code) for p in packets if isinstance(p, Pubrec)]


def test_awaiting_rel_quota_v5() -> None:
    h = Harness(max_awaiting_rel=2)
    watcher = h.connect("watcher")
    watcher.subscribe("t", qos=2)
    pub = h.connect("pub")
    for packet_id in (1, 2, 3):
        pub.publish("t", str(packet_id).encode(), qos=2, packet_id=packet_id)
    assert _codes(pub.take()) == [(1, 0), (2, 0), (3, ReasonCode.QUOTA_EXCEEDED)]
    assert [m.payload for m in watcher.take_publishes()] == [b"1", b"2"]  # 3: not routed
    pub.publish("t", b"1", qos=2, packet_id=1, dup=True)  # a resend is not a new message
    assert _codes(pub.take()) == [(1, 0)]
    pub.send(Pubrel(1))
    assert pub.take() == [Pubcomp(1)]
    pub.publish("t", b"4", qos=2, packet_id=4)
    assert _codes(pub.take()) == [(4, 0)]
    assert h.stats.awaiting_rel_refused == 1
    [event] = h.events.events
    assert event.kind is SecurityEventKind.LIMIT_EXCEEDED
    assert "awaiting_rel_quota" in event.detail


def test_awaiting_rel_quota_v311_disconnects() -> None:
    h = Harness(max_awaiting_rel=1)
    pub = h.connect("pub", version=4)
    pub.publish("t", qos=2, packet_id=1)
    pub.publish("t", qos=2, packet_id=2)
    assert _codes(pub.take()) == [(1, 0)]
    assert pub.link.closes == [None]


def test_qos1_does_not_count() -> None:
    h = Harness(max_awaiting_rel=1)
    pub = h.connect("pub")
    pub.publish("t", qos=2, packet_id=1)
    pub.publish("t", qos=1, packet_id=2)
    assert not pub.link.closed
    assert h.stats.awaiting_rel_refused == 0


def test_awaiting_rel_timeout_forgets_the_id() -> None:
    h = Harness(awaiting_rel_timeout=30)
    pub = h.connect("pub")
    pub.publish("t", qos=2, packet_id=1)
    assert h.advance(0) == h.now + 30  # the timer asks to be woken then
    h.advance(29.9)
    assert 1 in pub.live.state.inbound_qos2
    assert h.advance(0.1) is None
    assert pub.live.state.inbound_qos2 == {}
    assert h.stats.awaiting_rel_expired == 1
    [event] = h.events.events
    assert (event.kind, event.client_id) == (SecurityEventKind.LIMIT_EXCEEDED, "pub")
    pub.take()
    pub.send(Pubrel(1))  # too late: answered, but the id is unknown now
    assert pub.take() == [Pubcomp(1, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)]


def test_each_id_has_its_own_deadline() -> None:
    h = Harness(awaiting_rel_timeout=30)
    pub = h.connect("pub")
    pub.publish("t", qos=2, packet_id=1)
    h.advance(10)
    pub.publish("t", qos=2, packet_id=2)
    pub.publish("t", qos=2, packet_id=3)
    pub.send(Pubrel(3))
    assert h.advance(20) == h.now + 10
    assert list(pub.live.state.inbound_qos2) == [2]
    h.advance(10)
    assert pub.live.state.inbound_qos2 == {}
    assert h.stats.awaiting_rel_expired == 2


def test_offline_sessions_expire_their_ids_too() -> None:
    h = Harness(awaiting_rel_timeout=30)
    pub = h.connect("pub", clean=False, expiry=3600)
    pub.publish("t", qos=2, packet_id=1)
    pub.drop()
    h.advance(31)
    back = h.connect("pub", clean=False, expiry=3600)
    assert back.live.state.inbound_qos2 == {}
    back.publish("t", b"again", qos=2, packet_id=1, dup=True)  # routed again: a new message
    assert _codes(back.take()) == [(1, ReasonCode.NO_MATCHING_SUBSCRIBERS)]


def test_ended_sessions_leave_nothing_behind() -> None:
    h = Harness(awaiting_rel_timeout=30)
    pub = h.connect("pub")
    pub.publish("t", qos=2, packet_id=1)
    pub.disconnect()  # session expiry 0: the session ends
    assert h.advance(31) is None
    assert h.stats.awaiting_rel_expired == 0


def test_zero_timeout_waits_forever() -> None:
    h = Harness(awaiting_rel_timeout=0)
    pub = h.connect("pub")
    pub.publish("t", qos=2, packet_id=1)
    assert h.advance(10**6) is None
    assert 1 in pub.live.state.inbound_qos2
