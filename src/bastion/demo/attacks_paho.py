"""paho-mqtt clients of the attacker, used the way an ordinary device would: ``PahoProbe`` (one
connection, every wait bounded, no automatic reconnection, so it sees exactly what the broker
did) and ``Observer``, the read-only ``viewer`` that watches what really got delivered.

Blocking calls: the attack modules run them in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bastion.demo.attacks_wire import Dial, WillSpec

__all__ = ["ConnectOutcome", "Observer", "PahoProbe", "Watch"]

KEEPALIVE: Final = 30
T = TypeVar("T")


def _props(packet_type: int, **values: int) -> Any:
    make: Any = Properties  # paho's constructor is untyped
    props = make(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def _code(value: Any) -> int:
    """An int from paho's ReasonCode (or an int already)."""
    return int(getattr(value, "value", value))


@dataclass(frozen=True, slots=True)
class ConnectOutcome:
    """How a CONNECT went: the CONNACK reason code, or None and why there was none."""

    reason: int | None
    detail: str = ""
    reached: bool = True  # False: the connection (or its TLS handshake) failed first

    @property
    def accepted(self) -> bool:
        return self.reason == 0


class PahoProbe:
    """One MQTT 5 paho client over ``dial``; callbacks land in fields guarded by a condition."""

    def __init__(
        self,
        dial: Dial,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        will: WillSpec | None = None,
        session_expiry: int = 0,
        on_message: Callable[[Any], None] | None = None,
    ) -> None:
        self.dial = dial
        self.client_id = client_id
        self.session_expiry = session_expiry
        self.received = 0  # messages delivered to this client
        self.disconnect_reason: int | None = None  # the broker's DISCONNECT, if it sent one
        self._on_message_hook = on_message
        self._cond = threading.Condition()
        self._connack: int | None = None
        self._gone = False
        self._subacks: dict[int, list[int]] = {}
        self._acks: dict[int, int] = {}
        self._loop_running = False
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        if username is not None:
            client.username_pw_set(username, password)
        if dial.tls is not None:
            client.tls_set_context(dial.tls)
        if will is not None:
            will_props = _props(PacketTypes.WILLMESSAGE, WillDelayInterval=will.delay)
            client.will_set(
                will.topic, will.payload, will.qos, will.retain, will_props if will.delay else None
            )
        self._client = client

    # ------------------------------------------------------------ callbacks (paho's thread)

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, rc: Any, _props: Any) -> None:
        with self._cond:
            self._connack = _code(rc)
            self._cond.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, flags: Any, rc: Any, _props: Any) -> None:
        with self._cond:
            self._gone = True
            if getattr(flags, "is_disconnect_packet_from_server", False):
                self.disconnect_reason = _code(rc)
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        with self._cond:
            self.received += 1
        if self._on_message_hook is not None:
            self._on_message_hook(message)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        with self._cond:
            self._subacks[mid] = [_code(c) for c in codes]
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._cond:
            self._acks[mid] = _code(rc)
            self._cond.notify_all()

    # ------------------------------------------------------------ waiting

    def _wait(self, probe: Callable[[], T | None], timeout: float) -> T | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = probe()
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    @property
    def connected(self) -> bool:
        return bool(self._client.is_connected())

    @property
    def gone(self) -> bool:
        """The connection ended (the broker closed it, or we did)."""
        with self._cond:
            return self._gone

    # ------------------------------------------------------------ operations

    def connect(self, timeout: float, *, clean_start: bool = True) -> ConnectOutcome:
        """Connect and wait for the CONNACK, the connection's end, or ``timeout``."""
        kwargs: dict[str, Any] = {"clean_start": clean_start}
        if self.session_expiry:
            kwargs["properties"] = _props(
                PacketTypes.CONNECT, SessionExpiryInterval=self.session_expiry
            )
        if self.dial.source is not None:
            kwargs["bind_address"] = self.dial.source
        try:
            self._client.connect(self.dial.host, self.dial.port, KEEPALIVE, **kwargs)
        except (OSError, ValueError) as exc:
            return ConnectOutcome(None, f"could not connect: {exc}", reached=False)
        self._client.loop_start()
        self._loop_running = True

        def answered() -> int | None:
            if self._connack is not None:
                return self._connack
            return -1 if self._gone else None

        code = self._wait(answered, timeout)
        if code is None:
            return ConnectOutcome(None, f"no CONNACK within {timeout:g} s")
        if code < 0:
            return ConnectOutcome(None, "connection closed before a CONNACK")
        return ConnectOutcome(code)

    def subscribe(self, topic_filter: str, qos: int, timeout: float) -> list[int] | None:
        """SUBSCRIBE to one filter; the SUBACK reason codes, or None without an answer."""
        result, mid = self._client.subscribe(topic_filter, options=SubscribeOptions(qos=qos))
        if result != paho.MQTT_ERR_SUCCESS or mid is None:
            return None
        return self._wait(lambda: self._subacks.get(mid), timeout)

    def publish(self, topic: str, payload: bytes, qos: int, timeout: float) -> int | None:
        """Publish and wait for the flow to finish: the final reason code (0 for QoS 0 once
        written), or None when nothing came back in time."""
        info = self._client.publish(topic, payload, qos)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return None
        mid = int(info.mid)
        return self._wait(lambda: self._acks.get(mid), timeout)

    def disconnect(self, *, end_session: bool = True, timeout: float = 2.0) -> None:
        """A normal DISCONNECT (the will is discarded); ``end_session`` sets the Session Expiry
        Interval to 0 so nothing is left behind."""
        if self._client.is_connected():
            props = _props(PacketTypes.DISCONNECT, SessionExpiryInterval=0)
            code = PahoReasonCode(PacketTypes.DISCONNECT, identifier=0)
            self._client.disconnect(reasoncode=code, properties=props if end_session else None)
            self._wait(lambda: True if self._gone else None, timeout)
        self.close()

    def close(self) -> None:
        """Stop paho's thread and close the socket (idempotent; no DISCONNECT)."""
        if self._loop_running:
            self._loop_running = False
            self._client.loop_stop()
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


# --------------------------------------------------------------------- the observer


class Watch:
    """Counts the deliveries the observer saw that match ``match(topic, payload)`` since the
    watch began; ``topic`` is None when the topic was not valid UTF-8."""

    def __init__(self, match: Callable[[str | None, bytes], bool]) -> None:
        self.match = match
        self.started = time.monotonic()
        self.count = 0
        self.invalid_topics = 0
        self.last_at: float | None = None
        self.samples: list[bytes] = []  # the first few matching payloads

    def record(self, topic: str | None, payload: bytes, now: float) -> None:
        self.count += 1
        self.last_at = now
        if topic is None:
            self.invalid_topics += 1
        if len(self.samples) < 3:
            self.samples.append(payload[:120])


class Observer:
    """The ``viewer`` subscribed to ``#``: live deliveries only (retained copies sent at
    subscribe time are ignored), matched against the watches the attacks open."""

    def __init__(self, dial: Dial, username: str, password: str, client_id: str) -> None:
        self._lock = threading.Lock()
        self._watches: list[Watch] = []
        self._probe = PahoProbe(
            dial,
            client_id=client_id,
            username=username,
            password=password,
            on_message=self._deliver,
        )

    def start(self, timeout: float) -> str | None:
        """Connect and subscribe; None when watching, else what went wrong."""
        outcome = self._probe.connect(timeout)
        if not outcome.accepted:
            self._probe.close()
            return outcome.detail or f"CONNACK 0x{outcome.reason or 0:02X}"
        codes = self._probe.subscribe("#", 0, timeout)
        if not codes or codes[0] >= 0x80:
            self._probe.disconnect()
            return f"subscribing to # failed: {codes}"
        return None

    @property
    def alive(self) -> bool:
        return self._probe.connected

    def watch(self, match: Callable[[str | None, bytes], bool]) -> Watch:
        watch = Watch(match)
        with self._lock:
            self._watches.append(watch)
        return watch

    def unwatch(self, watch: Watch) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._watches.remove(watch)

    def snapshot(self, watch: Watch) -> tuple[int, int, float | None]:
        """(count, invalid topics, time of the last match), read consistently."""
        with self._lock:
            return watch.count, watch.invalid_topics, watch.last_at

    def _deliver(self, message: Any) -> None:
        if message.retain:
            return  # a stored retained copy, not something published now
        try:
            topic: str | None = message.topic
        except UnicodeDecodeError:
            topic = None
        payload = bytes(message.payload)
        now = time.monotonic()
        with self._lock:
            for watch in self._watches:
                if watch.match(topic, payload):
                    watch.record(topic, payload, now)

    def stop(self) -> None:
        self._probe.disconnect()
