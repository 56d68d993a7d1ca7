"""12 shutdown: SIGTERM and SIGINT stop the broker with exit code 0, connected clients see
their connections close (a v5 client may get DISCONNECT 0x8B first), and the port is released.

Each test starts and stops its own broker; only that process, by PID, is signalled.
"""

from __future__ import annotations

import signal
import time

import pytest

from support.brokerproc import Broker, port_accepts
from support.clients import BrokerFactory, Clients, unique
from support.pahoclient import V5, V311, PahoWill
from support.rawclient import MQTT_5, MQTT_311, PacketType, Prop, RawClient, Will, decode_disconnect

pytestmark = pytest.mark.interop
SERVER_SHUTTING_DOWN = 0x8B


def _stop(broker: Broker, sig: signal.Signals) -> float:
    start = time.monotonic()
    code = broker.stop(sig, timeout=10.0)
    elapsed = time.monotonic() - start
    assert code == 0, f"{broker.kind} exited {code} on {sig.name}\n{broker.log_tail()}"
    assert not port_accepts(broker.port), "listening socket still open after exit"
    return elapsed


def _assert_closed_by_server(raw: RawClient) -> None:
    """Closed; wills of other clients (PUBLISH) may still arrive on the way out."""
    packets = [p for p in raw.read_until_closed(timeout=5.0) if p.type != PacketType.PUBLISH]
    if raw.version == MQTT_311:
        assert packets == [], packets
        return
    assert [p.type for p in packets] in ([], [PacketType.DISCONNECT]), packets
    if packets:
        assert decode_disconnect(packets[0], MQTT_5).reason_code == SERVER_SHUTTING_DOWN


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_with_connected_clients_exits_zero(
    broker_factory: BrokerFactory, mqtt: Clients, sig: signal.Signals
) -> None:
    broker = broker_factory()
    topic = f"shutdown/{unique()}"
    paho_clients = [
        mqtt.paho(broker, V311, will=PahoWill(f"{topic}/will", b"w", 1)),
        mqtt.paho(broker, V5, properties={"SessionExpiryInterval": 60}),
    ]
    for client in paho_clients:
        client.subscribe(f"{topic}/#", 1)
    raws = [mqtt.raw(broker, MQTT_311), mqtt.raw(broker, MQTT_5)]
    raws[0].connect(unique(), clean=False, will=Will(f"{topic}/will", b"raw", 1))
    raws[1].connect(unique(), properties=[(Prop.SESSION_EXPIRY_INTERVAL, 60)])
    for raw in raws:
        raw.subscribe([(f"{topic}/#", 2)])
    paho_clients[0].publish(f"{topic}/x", b"traffic", 2)
    for client in paho_clients:
        assert client.expect().payload == b"traffic"
    for raw in raws:
        pub = raw.expect_publish()
        assert pub.qos == 2 and pub.packet_id is not None
        raw.ack(PacketType.PUBREC, pub.packet_id)
        raw.expect_ack(PacketType.PUBREL)  # and never PUBCOMP: a QoS 2 flow left half done

    _stop(broker, sig)
    for raw in raws:
        _assert_closed_by_server(raw)
    for client in paho_clients:
        info = client.wait_disconnected()
        if client.version == V5 and info.from_server:
            assert info.reason_code == SERVER_SHUTTING_DOWN, info


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_broker_stops_promptly(broker_factory: BrokerFactory, sig: signal.Signals) -> None:
    broker = broker_factory()
    assert _stop(broker, sig) < 5.0


def test_sigterm_during_publish_burst_exits_zero(
    broker_factory: BrokerFactory, mqtt: Clients
) -> None:
    broker = broker_factory()
    topic = f"shutdown/{unique()}"
    sub = mqtt.paho(broker, V5)
    sub.subscribe(topic, 1)
    pub = mqtt.paho(broker, V5)
    for i in range(200):
        pub.publish_nowait(topic, str(i).encode() * 100, 1)
    sub.expect()  # traffic is flowing
    _stop(broker, signal.SIGTERM)
    sub.wait_disconnected()
    pub.wait_disconnected()


def test_half_open_connection_does_not_block_shutdown(
    broker_factory: BrokerFactory, mqtt: Clients
) -> None:
    """A client that connected at TCP level but never sent CONNECT must not hang the exit."""
    broker = broker_factory()
    silent = mqtt.raw(broker, MQTT_311)
    partial = mqtt.raw(broker, MQTT_5)
    partial.send(b"\x10\x20\x00\x04MQ")  # half a CONNECT
    _stop(broker, signal.SIGTERM)
    assert silent.read_until_closed() == []
    assert partial.read_until_closed() == []
