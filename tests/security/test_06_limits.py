"""06 size and rate limits: packets over ``mqtt.max_packet_size`` (even one that only *claims*
a huge remaining length) get 0x95 Packet too large and a disconnect; a client publishing far
above its ``[limits.client]`` budget is disconnected (0x96 / 0x97) or throttled, and another
client's messages keep flowing meanwhile (asserted with generous bounds, never tight timings).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Final

import pytest

from support.brokerproc import BROKER_KIND, Broker, bastion_only, start_broker
from support.clients import BrokerFactory, Clients, loopback_address, stop_and_check, unique
from support.pahoclient import PahoClient
from support.rawclient import MQTT_5, MQTT_311, encode_connect, encode_publish, encode_varint
from support.settings import SettingValue

from .deployment import ADMIN, ALICE, PASSWORDS, Credentials, hardened_config
from .harness import (
    PACKET_TOO_LARGE,
    QUOTA_EXCEEDED,
    RATE_TOO_HIGH,
    Bystanders,
    assert_cut_off,
    connect_as,
    expect_first,
    publish_sentinel,
    raw_as,
)

pytestmark = pytest.mark.security

MAX_PACKET_SIZE: Final = 2048
SIZE_SETTINGS: Final[Mapping[str, SettingValue]] = {"mqtt.max_packet_size": MAX_PACKET_SIZE}
SIZE_MOSQUITTO: Final = f"max_packet_size {MAX_PACKET_SIZE}\n"

# Per-client publish budgets (issue 4, `[limits.client]`).
RATE: Final = 20.0
BURST: Final = 20.0
DISCONNECT_ON_RATE: Final[Mapping[str, SettingValue]] = {
    "limits.client.messages_per_second": RATE,
    "limits.client.burst_messages": BURST,
    "limits.client.action": "disconnect",
}
BYTE_RATE: Final = 8192.0
DISCONNECT_ON_BYTES: Final[Mapping[str, SettingValue]] = {
    "limits.client.bytes_per_second": BYTE_RATE,
    "limits.client.burst_bytes": BYTE_RATE,
    "limits.client.action": "disconnect",
}
THROTTLE_RATE: Final = 50.0
THROTTLE: Final[Mapping[str, SettingValue]] = {
    "limits.client.messages_per_second": THROTTLE_RATE,
    "limits.client.burst_messages": THROTTLE_RATE,
    "limits.client.action": "throttle",
}
FLOOD: Final = 1000  # messages, sent in one burst

VERSIONS = pytest.mark.parametrize("version", [MQTT_5, MQTT_311], ids=["v5", "v311"])


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, credentials: Credentials) -> Iterator[Broker]:
    """This module's hardened broker, with a small maximum packet size."""
    config = hardened_config(SIZE_SETTINGS)
    started = start_broker(
        tmp_path_factory.mktemp("limits"),
        name=BROKER_KIND,
        setup=credentials.setup(),
        bastion_toml=config["bastion_toml"],
        mosquitto_conf=config["mosquitto_conf"] + SIZE_MOSQUITTO,
    )
    yield started
    stop_and_check(started)


def _watch(admin: PahoClient, ns: str) -> None:
    admin.drain()
    assert admin.subscribe(f"sec/alice/{ns}/#", 1) == [1]


# ----------------------------------------------------------------- packet size


@VERSIONS
def test_oversized_publish_is_refused(
    *,
    broker: Broker,
    mqtt: Clients,
    admin: PahoClient,
    bystanders: Bystanders,
    ns: str,
    version: int,
) -> None:
    _watch(admin, ns)
    offender = raw_as(mqtt, broker, ALICE, version, source=loopback_address())
    offender.try_send(
        encode_publish(f"sec/alice/{ns}/big", b"x" * (2 * MAX_PACKET_SIZE), version=version, qos=1)
    )
    assert assert_cut_off(offender, (PACKET_TOO_LARGE,)) == []
    expect_first(admin, *publish_sentinel(admin, f"sec/alice/{ns}/sentinel"))
    bystanders.exchange()


@VERSIONS
def test_huge_remaining_length_is_refused_before_the_body(
    *,
    broker: Broker,
    mqtt: Clients,
    admin: PahoClient,
    bystanders: Bystanders,
    ns: str,
    version: int,
) -> None:
    """The header alone claims 256 MiB; the broker must not wait for (or buffer) the body."""
    _watch(admin, ns)
    offender = raw_as(mqtt, broker, ALICE, version, source=loopback_address())
    offender.try_send(bytes([0x32]) + encode_varint(268_435_455) + b"\x00\x05sec/a\x00\x01")
    assert assert_cut_off(offender, (PACKET_TOO_LARGE,), timeout=5.0) == []
    expect_first(admin, *publish_sentinel(admin, f"sec/alice/{ns}/sentinel"))
    bystanders.exchange()


@VERSIONS
def test_oversized_connect_is_refused(
    broker: Broker, mqtt: Clients, bystanders: Bystanders, version: int
) -> None:
    offender = mqtt.raw(broker, version, source=loopback_address())
    offender.try_send(
        encode_connect(
            unique(ALICE),
            version=version,
            username=ALICE,
            password=PASSWORDS[ALICE].encode() + b"\x00" * (2 * MAX_PACKET_SIZE),
        )
    )
    assert assert_cut_off(offender, (PACKET_TOO_LARGE,)) == []
    bystanders.exchange()


# ----------------------------------------------------------------- publish rate


def _flood(offender_version: int, topic: str, count: int, payload: bytes = b"flood") -> bytes:
    return b"".join(
        encode_publish(topic, payload, version=offender_version, qos=0) for _ in range(count)
    )


class RateScene:
    """A broker with a publish budget, an admin watching alice's namespace, and bystanders."""

    def __init__(
        self, factory: BrokerFactory, mqtt: Clients, settings: Mapping[str, SettingValue]
    ) -> None:
        self.broker = factory(**hardened_config(settings))
        self.ns = unique("flood")
        self.watcher = connect_as(mqtt, self.broker, ADMIN)
        assert self.watcher.subscribe(f"sec/alice/{self.ns}/#", 0) == [0]
        self.bystanders = Bystanders(mqtt, self.broker)
        self.topic = f"sec/alice/{self.ns}/flood"


@bastion_only("mosquitto has no per-client rate limits")
@pytest.mark.parametrize(
    ("settings", "payload", "count", "code", "version"),
    [
        (DISCONNECT_ON_RATE, b"x", 300, RATE_TOO_HIGH, MQTT_5),
        (DISCONNECT_ON_BYTES, b"x" * 1024, 40, QUOTA_EXCEEDED, MQTT_311),
    ],
    ids=["v5-messages-per-second", "v311-bytes-per-second"],
)
def test_flooding_client_is_disconnected(
    *,
    broker_factory: BrokerFactory,
    mqtt: Clients,
    settings: Mapping[str, SettingValue],
    payload: bytes,
    count: int,
    code: int,
    version: int,
) -> None:
    """``action = "disconnect"``: over the budget, v5 gets DISCONNECT 0x96 (messages/s) or
    0x97 (bytes/s) and the connection closes; 3.1.1 is just closed."""
    scene = RateScene(broker_factory, mqtt, settings)
    offender = raw_as(mqtt, scene.broker, ALICE, version, source=loopback_address())
    offender.try_send(_flood(version, scene.topic, count, payload))
    assert assert_cut_off(offender, (code,)) == []
    scene.bystanders.exchange()
    delivered = scene.watcher.collect(0.3)
    allowed = (BURST + 5) if code == RATE_TOO_HIGH else (BYTE_RATE * 2) / len(payload)
    assert 1 <= len(delivered) <= allowed, f"{len(delivered)} flood messages got through"


@bastion_only("mosquitto has no per-client rate limits")
def test_flooding_client_is_throttled_and_others_keep_flowing(
    broker_factory: BrokerFactory, mqtt: Clients
) -> None:
    scene = RateScene(broker_factory, mqtt, THROTTLE)
    offender = raw_as(mqtt, scene.broker, ALICE, MQTT_5, source=loopback_address())
    start = time.monotonic()
    offender.try_send(_flood(MQTT_5, scene.topic, FLOOD))
    for _ in range(3):  # well-behaved traffic during the flood: delivered, each within 5 s
        scene.bystanders.exchange(timeout=5.0)
    delivered = len(scene.watcher.collect(max(0.0, 2.0 - (time.monotonic() - start))))
    elapsed = time.monotonic() - start
    ceiling = 2 * (THROTTLE_RATE + THROTTLE_RATE * elapsed) + 20  # twice the budget, generously
    assert THROTTLE_RATE / 2 <= delivered <= ceiling < FLOOD, (
        f"{delivered} of {FLOOD} flood messages delivered in {elapsed:.1f}s; the budget is "
        f"{THROTTLE_RATE:.0f}/s with a burst of {THROTTLE_RATE:.0f}"
    )
    assert offender.check_open(0.05), "throttling slows the client down, it does not drop it"
