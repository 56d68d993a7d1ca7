"""Broker core, Will Messages: when they are published, delayed, cancelled or discarded.

MQTT 5 §3.1.2.5 (Will Flag), §3.1.3.2.2 (Will Delay Interval), §3.14.2.1 (DISCONNECT 0x04)
and MQTT 3.1.1 §3.1.2.5.
"""

from __future__ import annotations

from brokerkit import Client, Harness

from bastion.mqtt.packets import Properties, Subscription, Will
from bastion.mqtt.reason_codes import ReasonCode


def watch(h: Harness, topic_filter: str = "wills/#") -> Client:
    watcher = h.connect("watcher")
    watcher.subscribe(Subscription(topic_filter, qos=2, retain_as_published=True))
    return watcher


def payloads(client: Client) -> list[bytes]:
    return [m.payload for m in client.take_publishes()]


def delayed(seconds: int, payload: bytes = b"gone") -> Will:
    return Will("wills/c", payload, properties=Properties(will_delay_interval=seconds))


def test_normal_disconnect_discards_the_will() -> None:
    h = Harness()
    watcher = watch(h)
    h.connect("c", will=Will("wills/c", b"gone")).disconnect()
    assert payloads(watcher) == []
    h.connect("old", version=4, will=Will("wills/old", b"gone")).disconnect()
    assert payloads(watcher) == []


def test_disconnect_with_will_message_publishes_it() -> None:
    h = Harness()
    watcher = watch(h)
    h.connect("c", will=Will("wills/c", b"gone")).disconnect(
        ReasonCode.DISCONNECT_WITH_WILL_MESSAGE
    )
    assert payloads(watcher) == [b"gone"]


def test_disconnect_with_an_error_reason_keeps_the_will() -> None:
    h = Harness()
    watcher = watch(h)
    h.connect("c", will=Will("wills/c", b"gone")).disconnect(ReasonCode.UNSPECIFIED_ERROR)
    assert payloads(watcher) == [b"gone"]  # only 0x00 deletes it (§3.1.2.5)


def test_ungraceful_close_publishes_the_will() -> None:
    h = Harness()
    watcher = watch(h)
    will = Will(
        "wills/c",
        b"gone",
        qos=1,
        retain=True,
        properties=Properties(content_type="text/plain", user_properties=(("k", "v"),)),
    )
    h.connect("c", will=will).drop()
    [msg] = watcher.take_publishes()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("wills/c", b"gone", 1, True)
    assert msg.properties.content_type == "text/plain"
    assert msg.properties.user_properties == (("k", "v"),)
    assert msg.properties.will_delay_interval is None
    retained = h.broker.retained.get("wills/c")
    assert retained is not None and retained.payload == b"gone"


def test_v311_will_is_published_on_ungraceful_close() -> None:
    h = Harness()
    watcher = watch(h)
    h.connect("c", version=4, will=Will("wills/c", b"gone")).drop()
    assert payloads(watcher) == [b"gone"]


def test_delayed_will_is_published_after_the_delay() -> None:
    h = Harness()
    watcher = watch(h)
    h.connect("c", clean=False, expiry=300, will=delayed(30)).drop()
    assert payloads(watcher) == []
    assert h.advance(10) == h.now + 20
    assert payloads(watcher) == []
    h.advance(20)
    assert payloads(watcher) == [b"gone"]
    h.advance(100)
    assert payloads(watcher) == []  # only once


def test_reconnect_within_the_delay_cancels_the_will() -> None:
    h = Harness()
    watcher = watch(h)
    h.connect("c", clean=False, expiry=300, will=delayed(30)).drop()
    h.advance(10)
    back = h.connect("c", clean=False, expiry=300)
    h.advance(60)
    assert payloads(watcher) == []
    back.disconnect()
    h.advance(60)
    assert payloads(watcher) == []  # the new connection has no will


def test_session_expiry_cuts_the_will_delay_short() -> None:
    h = Harness()
    watcher = watch(h)
    h.connect("c", clean=False, expiry=10, will=delayed(60)).drop()
    h.advance(9)
    assert payloads(watcher) == []
    h.advance(1)
    assert payloads(watcher) == [b"gone"]
    assert "c" not in h.broker.sessions
    h.advance(100)
    assert payloads(watcher) == []


def test_delay_with_zero_session_expiry_publishes_at_once() -> None:
    h = Harness()
    watcher = watch(h)
    h.connect("c", will=delayed(60)).drop()
    assert payloads(watcher) == [b"gone"]


def test_reconnect_with_clean_start_fires_the_pending_will() -> None:
    h = Harness()
    watcher = watch(h)
    h.connect("c", clean=False, expiry=300, will=delayed(60)).drop()
    h.advance(5)
    h.connect("c", clean=True)
    assert payloads(watcher) == [b"gone"]


def test_v311_ignores_will_delay() -> None:
    h = Harness()
    watcher = watch(h)
    h.connect("c", version=4, clean=False, will=Will("wills/c", b"gone")).drop()
    assert payloads(watcher) == [b"gone"]


def test_will_message_expiry_starts_when_it_is_published() -> None:
    h = Harness()
    watcher = watch(h)
    will = Will(
        "wills/c",
        b"gone",
        qos=1,
        properties=Properties(will_delay_interval=30, message_expiry_interval=20),
    )
    h.connect("c", clean=False, expiry=300, will=will).drop()
    h.advance(30)
    [msg] = watcher.take_publishes()
    assert msg.properties.message_expiry_interval == 20


def test_will_respects_no_local_of_its_own_client() -> None:
    h = Harness()
    client = h.connect("c", clean=False, expiry=60, will=Will("wills/c", b"gone", qos=1))
    client.subscribe(Subscription("wills/#", qos=1, no_local=True))
    other = watch(h)
    client.drop()
    assert payloads(other) == [b"gone"]
    back = h.connect("c", clean=False, expiry=60)
    assert back.take() == []
