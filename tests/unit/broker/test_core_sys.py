"""Broker core, ``$SYS/broker/...`` topics, statistics and server shutdown.

Topic names and value formats follow Mosquitto's; shutdown follows MQTT 5 §4.13 (DISCONNECT
0x8B) with every session ending, so every will is published.
"""

from __future__ import annotations

from brokerkit import Client, FakeLink, Harness

from bastion.mqtt.packets import Properties, Publish, Subscription, Will
from bastion.mqtt.reason_codes import ReasonCode


def sys_values(client: Client) -> dict[str, str]:
    return {m.topic: m.payload.decode() for m in client.take_publishes()}


def sys_watcher(h: Harness) -> Client:
    watcher = h.connect("admin")
    watcher.subscribe(Subscription("$SYS/#", retain_as_published=True))
    watcher.take()
    return watcher


def test_first_round_publishes_everything_retained() -> None:
    h = Harness(sys_interval=10)
    watcher = sys_watcher(h)
    assert h.advance(0) == h.now + 10
    msgs = watcher.take_publishes()
    assert all(m.retain and m.qos == 0 for m in msgs)
    values = {m.topic: m.payload.decode() for m in msgs}
    assert values["$SYS/broker/version"] == "bastion version 9.9.9"
    assert values["$SYS/broker/uptime"] == "0 seconds"
    assert values["$SYS/broker/clients/connected"] == "1"
    assert values["$SYS/broker/clients/total"] == "1"
    assert values["$SYS/broker/clients/maximum"] == "1"
    assert values["$SYS/broker/clients/disconnected"] == "0"
    assert values["$SYS/broker/subscriptions/count"] == "1"
    assert values["$SYS/broker/retained messages/count"] == "0"
    for name in (
        "messages/received",
        "messages/sent",
        "publish/received",
        "publish/sent",
        "publish/dropped",
        "bytes/received",
        "bytes/sent",
        "connections",
    ):
        for window in ("1min", "5min", "15min"):
            assert values[f"$SYS/broker/load/{name}/{window}"] == "0.00"
    for name in ("publish/messages/received", "publish/messages/sent", "bytes/sent"):
        assert f"$SYS/broker/{name}" in values


def test_only_changed_values_and_uptime_are_republished() -> None:
    h = Harness(sys_interval=10)
    watcher = sys_watcher(h)
    h.advance(0)
    watcher.take()
    h.advance(5)
    assert watcher.take() == []  # not due yet
    h.advance(5)
    values = sys_values(watcher)
    assert values["$SYS/broker/uptime"] == "10 seconds"
    assert "$SYS/broker/version" not in values
    assert "$SYS/broker/clients/connected" not in values
    h.connect("other").drop()
    h.advance(10)
    values = sys_values(watcher)
    assert values["$SYS/broker/clients/maximum"] == "2"
    assert "$SYS/broker/clients/connected" not in values  # back to 1: unchanged
    assert values["$SYS/broker/load/connections/1min"] != "0.00"


def test_counters() -> None:
    h = Harness(sys_interval=10)
    sub = h.connect("sub", clean=False, expiry=60)
    sub.subscribe("t", qos=1)
    pub = h.connect("pub")
    pub.publish("t", b"1", qos=1)
    pub.publish("t", b"2", qos=0, retain=True)
    h.broker.stats.bytes_received += 1234  # as the transport does
    sub.drop()
    stats = h.broker.stats
    assert stats.publish_messages_received == 2
    assert stats.publish_messages_sent == 2
    # CONNECT x2, SUBSCRIBE, PUBLISH x2 in; CONNACK x2, SUBACK, PUBLISH x2, PUBACK out.
    assert stats.messages_received == 5
    assert stats.messages_sent == 6
    assert (stats.clients_connected, stats.clients_disconnected, stats.clients_total) == (1, 1, 2)
    watcher = sys_watcher(h)
    h.advance(0)
    values = sys_values(watcher)
    assert values["$SYS/broker/bytes/received"] == "1234"
    assert values["$SYS/broker/retained messages/count"] == "1"
    assert values["$SYS/broker/clients/disconnected"] == "1"


def test_load_averages_follow_the_message_rate() -> None:
    h = Harness(sys_interval=60)
    watcher = sys_watcher(h)
    h.advance(0)
    watcher.take()
    pub = h.connect("pub")
    for _ in range(120):
        pub.publish("x")
    h.advance(60)
    values = sys_values(watcher)
    # 120 PUBLISH in 60 s = 120/min; a 1-minute average moves 1 - e^-1 of the way there.
    assert values["$SYS/broker/load/publish/received/1min"] == "75.85"
    assert values["$SYS/broker/load/publish/received/5min"] == "21.75"
    assert values["$SYS/broker/load/publish/received/15min"] == "7.74"


def test_sys_disabled_with_zero_interval() -> None:
    h = Harness(sys_interval=0)
    watcher = sys_watcher(h)
    assert h.advance(100) is None
    assert watcher.take() == []


def test_shutdown_publishes_wills_and_closes_everyone() -> None:
    h = Harness()
    watcher = h.connect("watcher")
    watcher.subscribe("wills/#")
    online = h.connect("online", will=Will("wills/online", b"bye"))
    delayed_will = Will("wills/offline", b"later", properties=Properties(will_delay_interval=60))
    h.connect("offline", clean=False, expiry=600, will=delayed_will).drop()
    old = h.connect("old", version=4)
    h.broker.shutdown(h.now)
    published = [p for p in watcher.link.sent if isinstance(p, Publish)]
    assert sorted(p.payload for p in published) == [b"bye", b"later"]
    assert watcher.link.closes == [ReasonCode.SERVER_SHUTTING_DOWN]
    assert online.link.closes == [ReasonCode.SERVER_SHUTTING_DOWN]
    assert old.link.closes == [ReasonCode.SERVER_SHUTTING_DOWN]  # the link sends no DISCONNECT
    assert watcher.link.history[-1] == "close"  # the wills went out before the close
    assert h.broker.stats.clients_connected == 0
    # The transports report the ends later: nothing more happens.
    online.drop()
    watcher.drop()
    assert h.advance(120) is None
    assert [p for p in watcher.link.sent if isinstance(p, Publish)] == published


def test_shutdown_is_idempotent() -> None:
    h = Harness()
    link = FakeLink()
    client = h.connect("c", link=link)
    h.broker.shutdown(h.now)
    h.broker.shutdown(h.now)
    assert client.link.closes == [ReasonCode.SERVER_SHUTTING_DOWN]
