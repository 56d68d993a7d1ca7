"""What every client connection of a server shares, and the registry of live ones.

``Front`` bundles the broker core, policy, defences and audit sink; ``ListenerInfo`` the
per-listener facts (TLS context, identity mode, QoS ceiling); ``ConnectionRegistry`` the live
connections for timeouts and shutdown. ``tcp.py`` holds the per-connection protocol.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bastion.broker.core import Broker
from bastion.config.schema import MqttSettings
from bastion.security.audit import SecurityEvent
from bastion.security.defences import Defences
from bastion.security.policy import Policy

if TYPE_CHECKING:
    from bastion.transport.tcp import MqttClientProtocol


SecuritySink = Callable[[SecurityEvent, float], object]


class OutputFlusher:
    """The connections with output waiting, written out together.

    A connection queues what it sends and registers here once; everything is written when
    the read that caused it has been handled (``flush``, called by the transport after each
    read) or, for output from timers and tasks, at the end of the event-loop turn. So a
    subscriber's next messages leave as soon as its acknowledgements are read, not after
    every other socket of the turn, and one read still makes one write per receiver.
    """

    __slots__ = ("_pending", "_scheduled")

    def __init__(self) -> None:
        self._pending: list[MqttClientProtocol] = []
        self._scheduled = False

    def add(self, protocol: MqttClientProtocol) -> None:
        self._pending.append(protocol)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        for protocol in pending:
            protocol.flush()


@dataclass
class Front:
    """What every connection of one process shares: core, policy, defences, audit sink."""

    broker: Broker
    settings: MqttSettings
    policy: Policy
    defences: Defences
    report: SecuritySink
    executor: Executor | None  # where password hashes are checked (None: inline, tests)
    registry: ConnectionRegistry
    flusher: OutputFlusher = field(default_factory=OutputFlusher)


@dataclass(frozen=True)
class ListenerInfo:
    """Per-listener facts a connection needs, TLS included (the sockets are plain TCP)."""

    name: str
    # The context each connection's handshake starts from (``ServerContextHolder``'s
    # ``listener_context``, so a reload reaches new handshakes); None: plain MQTT.
    tls_context: ssl.SSLContext | None = None
    handshake_timeout: float | None = None  # seconds from accept (None: connect_timeout)
    identity_mode: str = "none"  # "none", "cn" or "san": certificate identity as username
    max_qos: int | None = None  # the listener's QoS ceiling (None: the server's alone)

    @property
    def tls(self) -> bool:
        return self.tls_context is not None


class ConnectionRegistry:
    """The live client connections of a server, for timeouts and shutdown."""

    def __init__(self) -> None:
        self._live: set[MqttClientProtocol] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, protocol: MqttClientProtocol) -> None:
        self._live.add(protocol)

    def discard(self, protocol: MqttClientProtocol) -> None:
        self._live.discard(protocol)

    def track(self, task: asyncio.Task[None]) -> None:
        """Keep a reference to a connection's background task until it ends."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._live)

    def check_timeouts(self, now: float) -> None:
        for protocol in list(self._live):
            protocol.check_timeouts(now)

    def close_all(self) -> None:
        """Close every connection still open (after the broker said goodbye to its clients)."""
        for protocol in list(self._live):
            protocol.abort_quietly()
        for task in list(self._tasks):
            task.cancel()


__all__ = ["ConnectionRegistry", "Front", "ListenerInfo", "SecuritySink"]
