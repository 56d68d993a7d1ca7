"""A subscriber that reads too slowly loses QoS 0 messages, not the broker's memory."""

from __future__ import annotations

import asyncio

from bastion.broker.core import Broker
from bastion.config.schema import LimitsSettings, MqttSettings
from bastion.mqtt.packets import Publish
from bastion.security.defences import build_defences
from bastion.security.policy import Policy
from bastion.transport.tcp import (
    SLOW_CLIENT_BUFFER,
    ConnectionRegistry,
    Front,
    ListenerInfo,
    MqttClientProtocol,
)


class StuckTransport(asyncio.Transport):
    """A transport whose peer never reads: the write buffer only grows."""

    def __init__(self) -> None:
        super().__init__()
        self.buffered = 0
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.buffered += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _protocol() -> tuple[MqttClientProtocol, StuckTransport, Broker]:
    settings = MqttSettings()
    policy = Policy(allow_anonymous=True)
    broker = Broker(settings, policy)
    front = Front(
        broker=broker,
        settings=settings,
        policy=policy,
        defences=build_defences(LimitsSettings()),
        report=lambda event, now: None,
        executor=None,
        registry=ConnectionRegistry(),
    )
    protocol = MqttClientProtocol(front, ListenerInfo(name="test"))
    transport = StuckTransport()
    protocol.connection_made(transport)
    return protocol, transport, broker


async def test_qos0_dropped_once_the_write_buffer_is_full() -> None:
    protocol, transport, _ = _protocol()
    payload = b"x" * 60_000
    sent = 0
    for _ in range(200):  # 12 MB offered to a peer that reads nothing
        if protocol.send(Publish("t", payload)):
            sent += 1
        await asyncio.sleep(0)  # let the batched write reach the transport
    assert sent < 200
    assert transport.buffered <= SLOW_CLIENT_BUFFER + 2 * len(payload) + 1024
    # QoS 1/2 are never dropped here: the session's window and queue bound them.
    assert protocol.send(Publish("t", payload, qos=1, packet_id=1))
    # Once the peer catches up, QoS 0 flows again.
    transport.buffered = 0
    assert protocol.send(Publish("t", payload))
