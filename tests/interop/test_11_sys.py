"""11 $SYS: the broker publishes its statistics under $SYS/broker/..., they move as clients
come and go, and wildcard subscriptions never match them [MQTT-4.7.2-1].
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from support.brokerproc import Broker, start_broker
from support.clients import Clients, stop_and_check
from support.pahoclient import V5, V311, PahoClient

pytestmark = pytest.mark.interop

SYS_INTERVAL = 1
REQUIRED = {
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/clients/total",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
}
COUNTER = re.compile(r"^\d+$")
UPTIME = re.compile(r"^(\d+)( seconds?)?$")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """This module's broker publishes $SYS every second."""
    started = start_broker(
        tmp_path_factory.mktemp("sys"),
        bastion_toml=f"[mqtt]\nsys_interval = {SYS_INTERVAL}\n",
        mosquitto_conf=f"sys_interval {SYS_INTERVAL}",
        name="sys",
    )
    yield started
    stop_and_check(started)


def _sys_watcher(mqtt: Clients, broker: Broker, version: int = V5) -> PahoClient:
    client = mqtt.paho(broker, version)
    assert client.subscribe("$SYS/#", 0) == [0]
    return client


def _wait_for_value(
    client: PahoClient, topic: str, accept: re.Pattern[str], timeout: float = 4 * SYS_INTERVAL + 2
) -> str:
    """The next payload on ``topic`` (retained or fresh) that matches ``accept``."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        msg = client.expect(timeout=remaining)
        text = msg.payload.decode("utf-8", "replace")
        if msg.topic == topic and accept.match(text):
            return text
    raise AssertionError(f"no {topic} matching {accept.pattern} within {timeout}s")


def _counter(client: PahoClient, topic: str, at_least: int = 0) -> int:
    """Wait until ``topic`` reports a value of at least ``at_least``; return it."""
    deadline = time.monotonic() + 4 * SYS_INTERVAL + 2
    last = "nothing"
    while (remaining := deadline - time.monotonic()) > 0:
        msg = client.expect(timeout=remaining)
        if msg.topic != topic:
            continue
        last = msg.payload.decode("utf-8", "replace")
        assert COUNTER.match(last), f"{topic} = {last!r} is not a counter"
        if int(last) >= at_least:
            return int(last)
    raise AssertionError(f"{topic} never reached {at_least} (last: {last})")


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_sys_topics_are_published(broker: Broker, mqtt: Clients, version: int) -> None:
    client = _sys_watcher(mqtt, broker, version)
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 4 * SYS_INTERVAL + 2
    while not set(seen) >= REQUIRED and (remaining := deadline - time.monotonic()) > 0:
        msg = client.expect(timeout=remaining)
        assert msg.topic.startswith("$SYS/"), msg.topic
        seen[msg.topic] = msg.payload.decode("utf-8", "replace")
    missing = REQUIRED - set(seen)
    assert not missing, f"missing {sorted(missing)}; saw {sorted(seen)}"
    assert seen["$SYS/broker/version"].strip(), "empty version"
    assert UPTIME.match(seen["$SYS/broker/uptime"]), seen["$SYS/broker/uptime"]
    for topic in REQUIRED - {"$SYS/broker/version", "$SYS/broker/uptime"}:
        assert COUNTER.match(seen[topic]), f"{topic} = {seen[topic]!r}"


def _uptime_seconds(text: str) -> int:
    match = UPTIME.match(text)
    assert match is not None, f"uptime {text!r}"
    return int(match.group(1))


def test_uptime_advances(broker: Broker, mqtt: Clients) -> None:
    client = _sys_watcher(mqtt, broker)
    first = _uptime_seconds(_wait_for_value(client, "$SYS/broker/uptime", UPTIME))
    deadline = time.monotonic() + 4 * SYS_INTERVAL + 2
    while time.monotonic() < deadline:
        if _uptime_seconds(_wait_for_value(client, "$SYS/broker/uptime", UPTIME)) > first:
            return
    raise AssertionError(f"uptime stuck at {first}")


def test_connected_clients_counter_follows_connections(broker: Broker, mqtt: Clients) -> None:
    watcher = _sys_watcher(mqtt, broker)
    base = _counter(watcher, "$SYS/broker/clients/connected", at_least=1)
    extra = [mqtt.paho(broker, V311), mqtt.paho(broker, V5)]
    _counter(watcher, "$SYS/broker/clients/connected", at_least=base + 2)
    for client in extra:
        client.disconnect()
    deadline = time.monotonic() + 4 * SYS_INTERVAL + 2
    while time.monotonic() < deadline:
        if _counter(watcher, "$SYS/broker/clients/connected") <= base:
            return
    raise AssertionError("clients/connected did not come back down")


def test_message_counters_count_traffic(broker: Broker, mqtt: Clients, ns: str) -> None:
    watcher = _sys_watcher(mqtt, broker)
    received = _counter(watcher, "$SYS/broker/messages/received")
    sent = _counter(watcher, "$SYS/broker/messages/sent")
    pub = mqtt.paho(broker, V5)
    sub = mqtt.paho(broker, V5)
    sub.subscribe(f"{ns}/#", 1)
    for i in range(5):
        pub.publish(f"{ns}/count", str(i).encode(), 1)
    assert len(sub.expect_n(5)) == 5
    _counter(watcher, "$SYS/broker/messages/received", at_least=received + 5)
    _counter(watcher, "$SYS/broker/messages/sent", at_least=sent + 5)


def test_wildcards_never_match_sys_topics(broker: Broker, mqtt: Clients) -> None:
    control = _sys_watcher(mqtt, broker)
    wild = mqtt.paho(broker, V5)
    assert wild.subscribe("#", 0) == [0]
    assert wild.subscribe("+/broker/#", 0) == [0]
    _wait_for_value(control, "$SYS/broker/uptime", UPTIME)  # $SYS is being published...
    _wait_for_value(control, "$SYS/broker/uptime", UPTIME)  # ...for a whole interval
    leaked = [m.topic for m in wild.drain() if m.topic.startswith("$")]
    assert leaked == [], f"'#' or '+' matched $-topics: {leaked[:5]}"
