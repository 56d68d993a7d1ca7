"""07 keep alive: silent clients are dropped after 1.5x Keep Alive (with their will); any
control packet counts as activity. The v5 Server Keep Alive override is checked here too.
"""

from __future__ import annotations

import time

import pytest

from support.brokerproc import USING_MOSQUITTO, Broker, bastion_only
from support.clients import BrokerFactory, Clients, unique
from support.pahoclient import V5, V311
from support.rawclient import PacketType, Prop, RawClient, Will, decode_disconnect, encode_publish

pytestmark = pytest.mark.interop

# mosquitto 2.0.11 only sweeps for expired keep alives every few seconds, so a 1 s keep alive
# is enforced after 5-6 s there. Bastion is held to the spec: 1.5 x Keep Alive plus slack.
KEEPALIVE_SLACK = 7.0 if USING_MOSQUITTO else 1.0


def _assert_timed_out(raw: RawClient, label: str) -> None:
    """A v5 client may get DISCONNECT 0x8D (Keep Alive timeout) before the close; nothing else."""
    for pkt in raw.pending():
        assert pkt.type == PacketType.DISCONNECT, f"{label}: unexpected {pkt.name}"
        assert raw.version == V5, f"{label}: DISCONNECT sent to a 3.1.1 client"
        assert decode_disconnect(pkt, V5).reason_code == 0x8D, label


def test_keepalive_drops_only_silent_clients(broker: Broker, mqtt: Clients, ns: str) -> None:
    keepalive = 1
    will_topic = f"{ns}/will"
    watcher = mqtt.paho(broker, V5)
    watcher.subscribe(f"{will_topic}/+", 1)

    silent: dict[str, RawClient] = {}
    for name, version in (("silent311", V311), ("silent5", V5)):
        raw = mqtt.raw(broker, version)
        raw.connect(unique(), keepalive=keepalive, will=Will(f"{will_topic}/{name}", b"x", 1))
        silent[name] = raw
    pingers = [mqtt.raw(broker, V311), mqtt.raw(broker, V5)]
    for raw in pingers:
        raw.connect(unique(), keepalive=keepalive)
    publisher = mqtt.raw(broker, V5)  # a PUBLISH is activity as much as a PINGREQ is
    publisher.connect(unique(), keepalive=keepalive)

    start = time.monotonic()
    deadline = start + 1.5 * keepalive + KEEPALIVE_SLACK
    closed_after: dict[str, float] = {}
    while len(closed_after) < len(silent) and time.monotonic() < deadline:
        for raw in pingers:
            raw.ping()
        publisher.send(encode_publish(f"{ns}/activity", b".", version=V5))
        round_end = time.monotonic() + 0.4 * keepalive
        for name, raw in silent.items():
            if name not in closed_after and not raw.check_open(wait=0.0):
                closed_after[name] = time.monotonic() - start
        time.sleep(max(0.0, round_end - time.monotonic()))

    assert set(closed_after) == set(silent), f"not dropped in time: {closed_after}"
    for name, elapsed in closed_after.items():
        assert elapsed >= keepalive, f"{name} dropped after {elapsed:.2f}s, before its keep alive"
        _assert_timed_out(silent[name], name)
    for raw in pingers:  # the active clients were never touched
        raw.ping()
    publisher.ping()
    wills = sorted(m.topic for m in watcher.expect_n(2))  # dropped, so the wills go out
    assert wills == [f"{will_topic}/silent311", f"{will_topic}/silent5"]


@bastion_only("mosquitto's max_keepalive cannot go below 10 s, too slow to wait out here")
def test_server_keep_alive_is_enforced(broker_factory: BrokerFactory, mqtt: Clients) -> None:
    server = broker_factory(bastion_toml="[mqtt]\nmax_keepalive = 1\n")
    raw = mqtt.raw(server, V5)
    ack = raw.connect(unique(), keepalive=60)
    assert ack.properties.get_int(Prop.SERVER_KEEP_ALIVE) == 1  # [MQTT-3.2.2-21]
    start = time.monotonic()
    raw.read_until_closed(timeout=1.5 + KEEPALIVE_SLACK)
    assert time.monotonic() - start >= 1.0
    _assert_timed_out(raw, "v5")
