"""The seam between the broker core and a transport: one ``ClientLink`` per connection.

``transport/`` implements it around a socket and ``mqtt.connection``; the broker core only
ever sends packets through it, so unit tests swap in a recording fake.
"""

from __future__ import annotations

from typing import Protocol

from bastion.mqtt.packets import Packet


class ClientLink(Protocol):
    """One live network connection, as the broker core sees it."""

    protocol_version: int  # 3, 4 or 5
    peer: str  # "host:port"

    def send(self, packet: Packet) -> bool:
        """Encode and write ``packet``; False if it was not sent (over the client's limit).

        When a PUBLISH is not sent, the broker behaves as if it had completed sending it
        (MQTT 5 §3.1.2.11.4): the message is discarded for this client.
        """
        ...

    def close(self, reason_code: int | None = None) -> None:
        """Close the connection, first sending DISCONNECT(reason) on MQTT 5 if a reason is given.

        Never calls back into the broker synchronously; the transport later calls
        ``Broker.connection_lost()``.
        """
        ...

    def set_keep_alive(self, seconds: int) -> None:
        """Keep alive the transport must enforce (it waits 1.5 times this); 0 disables it."""
        ...

    def pause_reading(self) -> None:
        """Stop reading from the client (backpressure) until ``resume_reading``; time spent
        paused does not count against the client's keep alive."""
        ...

    def resume_reading(self) -> None:
        """Read from the client again after ``pause_reading``."""
        ...


__all__ = ["ClientLink"]
