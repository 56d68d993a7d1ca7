"""A typed, bounded-wait wrapper around paho-mqtt 2.x for the black-box tests.

paho runs its network loop in a thread (``loop_start``); everything it reports lands in
thread-safe structures that the test thread waits on with deadlines, never forever.
Automatic reconnection is off: a test must see exactly what the broker did.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

V311: Final = 4
V5: Final = 5
WAIT: Final = 5.0

PropInput = int | str | bytes | list[tuple[str, str]]
T = TypeVar("T")

# Re-exported so tests need not import paho directly.
CONNECT: Final[int] = PacketTypes.CONNECT
PUBLISH: Final[int] = PacketTypes.PUBLISH
SUBSCRIBE: Final[int] = PacketTypes.SUBSCRIBE
WILLMESSAGE: Final[int] = PacketTypes.WILLMESSAGE
DISCONNECT: Final[int] = PacketTypes.DISCONNECT


def build_props(packet_type: int, values: Mapping[str, PropInput]) -> Any:
    """A paho ``Properties`` from ``{"MessageExpiryInterval": 10, "UserProperty": [...]}``."""
    make: Any = Properties  # paho's constructor is untyped
    props = make(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


class PropView:
    """Read-only, typed view of a paho ``Properties`` object (or of none)."""

    def __init__(self, props: Any = None) -> None:
        self._data: dict[str, object] = {}
        if props is not None:
            for name in props.names:
                key = name.replace(" ", "")
                if hasattr(props, key):
                    self._data[key] = getattr(props, key)

    def __repr__(self) -> str:
        return f"PropView({self._data!r})"

    def has(self, name: str) -> bool:
        return name in self._data

    def names(self) -> set[str]:
        return set(self._data)

    def get_int(self, name: str) -> int | None:
        value = self._data.get(name)
        if isinstance(value, list):  # SubscriptionIdentifier arrives as a list
            value = value[0] if len(value) == 1 else value
        assert value is None or isinstance(value, int), f"{name}={value!r}"
        return value

    def get_str(self, name: str) -> str | None:
        value = self._data.get(name)
        assert value is None or isinstance(value, str), f"{name}={value!r}"
        return value

    def get_bytes(self, name: str) -> bytes | None:
        value = self._data.get(name)
        assert value is None or isinstance(value, bytes), f"{name}={value!r}"
        return value

    def get_ints(self, name: str) -> list[int]:
        value = self._data.get(name)
        if value is None:
            return []
        items: list[object] = value if isinstance(value, list) else [value]
        ints = [v for v in items if isinstance(v, int)]
        assert len(ints) == len(items), f"{name}={value!r}"
        return ints

    def get_pairs(self, name: str = "UserProperty") -> list[tuple[str, str]]:
        value = self._data.get(name)
        if value is None:
            return []
        assert isinstance(value, list), f"{name}={value!r}"
        return [(str(k), str(v)) for k, v in value]


@dataclass(frozen=True, slots=True)
class Message:
    """An application message as paho delivered it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    props: PropView = field(default_factory=PropView)


@dataclass(frozen=True, slots=True)
class ConnectResult:
    reason_code: int
    session_present: bool
    props: PropView


@dataclass(frozen=True, slots=True)
class DisconnectInfo:
    reason_code: int
    from_server: bool
    props: PropView


@dataclass(frozen=True, slots=True)
class PahoWill:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: Mapping[str, PropInput] = field(default_factory=dict)


class PahoClient:
    """One paho client, connected with ``loop_start`` and observed through bounded waits."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        version: int = V5,
        clean: bool = True,
        keepalive: int = 60,
        properties: Mapping[str, PropInput] | None = None,
        will: PahoWill | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        source: str | None = None,
    ) -> None:
        """``tls`` is a client context (it verifies the broker); ``source`` binds the local end
        to that loopback address, so the client has an IP of its own."""
        self.host, self.port, self.version = host, port, version
        self.source = source
        self.client_id = client_id
        self.clean, self.keepalive = clean, keepalive
        self.connect_properties = dict(properties or {})
        self.messages: queue.Queue[Message] = queue.Queue()
        self._cond = threading.Condition()
        self._connack: ConnectResult | None = None
        self._disconnect: DisconnectInfo | None = None
        self._subacks: dict[int, list[int]] = {}
        self._unsubacks: dict[int, list[int]] = {}
        self._published: dict[int, int] = {}
        self._loop_running = False
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if version == V5 else paho.MQTTv311,
            clean_session=None if version == V5 else clean,
            reconnect_on_failure=False,
        )
        self._client.max_inflight_messages_set(100)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_unsubscribe = self._on_unsubscribe
        self._client.on_publish = self._on_publish
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls is not None:
            self._client.tls_set_context(tls)
        if will is not None:
            self._client.will_set(
                will.topic,
                will.payload,
                will.qos,
                will.retain,
                build_props(WILLMESSAGE, will.properties) if will.properties else None,
            )

    # ----------------------------------------------------------------- paho callbacks (its thread)

    def _on_connect(self, _c: Any, _u: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self._connack = ConnectResult(
                int(rc.value), bool(flags.session_present), PropView(props)
            )
            self._cond.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self._disconnect = DisconnectInfo(
                int(rc.value), bool(flags.is_disconnect_packet_from_server), PropView(props)
            )
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        self.messages.put(
            Message(
                topic=str(msg.topic),
                payload=bytes(msg.payload),
                qos=int(msg.qos),
                retain=bool(msg.retain),
                dup=bool(msg.dup),
                props=PropView(getattr(msg, "properties", None)),
            )
        )

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        with self._cond:
            self._subacks[mid] = [int(c.value) for c in codes]
            self._cond.notify_all()

    def _on_unsubscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        with self._cond:
            self._unsubacks[mid] = [int(c.value) for c in codes]
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._cond:
            self._published[mid] = int(rc.value)
            self._cond.notify_all()

    # ----------------------------------------------------------------- waiting

    def _wait(self, probe: Callable[[], T | None], what: str, timeout: float) -> T:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = probe()
                if result is not None:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self.client_id}: no {what} within {timeout}s")
                self._cond.wait(remaining)

    # ----------------------------------------------------------------- connection

    def connect(self, timeout: float = WAIT) -> ConnectResult:
        """Open the connection and wait for CONNACK (or for the broker to close on us)."""
        with self._cond:
            self._connack = None
            self._disconnect = None
        kwargs: dict[str, Any] = {}
        if self.version == V5:
            kwargs["clean_start"] = self.clean
            if self.connect_properties:
                kwargs["properties"] = build_props(CONNECT, self.connect_properties)
        if self.source is not None:
            kwargs["bind_address"] = self.source
        self._client.connect(self.host, self.port, self.keepalive, **kwargs)
        if not self._loop_running:
            self._client.loop_start()
            self._loop_running = True

        def probe() -> ConnectResult | None:
            if self._connack is not None:
                return self._connack
            if self._disconnect is not None:
                raise AssertionError(f"{self.client_id}: closed before CONNACK: {self._disconnect}")
            return None

        return self._wait(probe, "CONNACK", timeout)

    @property
    def connack(self) -> ConnectResult:
        assert self._connack is not None, "not connected yet"
        return self._connack

    def is_connected(self) -> bool:
        return bool(self._client.is_connected())

    def disconnect(
        self,
        reason_code: int | None = None,
        properties: Mapping[str, PropInput] | None = None,
        timeout: float = WAIT,
    ) -> None:
        """Send DISCONNECT (optionally a v5 reason code) and wait until paho has closed."""
        rc = ReasonCode(DISCONNECT, identifier=reason_code) if reason_code is not None else None
        props = build_props(DISCONNECT, properties) if properties else None
        self._client.disconnect(reasoncode=rc, properties=props)
        self.wait_disconnected(timeout)
        self.stop_loop()

    def wait_disconnected(self, timeout: float = WAIT) -> DisconnectInfo:
        """Wait until the connection is gone (server DISCONNECT, close, or our disconnect)."""
        return self._wait(lambda: self._disconnect, "disconnect", timeout)

    def disconnected_info(self) -> DisconnectInfo | None:
        with self._cond:
            return self._disconnect

    def stop_loop(self) -> None:
        if self._loop_running:
            self._client.loop_stop()
            self._loop_running = False

    def kill_connection(self) -> None:
        """Cut the TCP connection under paho without a DISCONNECT, as a crashing device would."""
        sock = self._client.socket()
        assert isinstance(sock, socket.socket), f"not connected over plain TCP: {sock!r}"
        sock.shutdown(socket.SHUT_RDWR)
        self.wait_disconnected()

    def close(self) -> None:
        """Idempotent cleanup: DISCONNECT if still connected, stop the network thread."""
        if self._client.is_connected():
            with contextlib.suppress(AssertionError):
                self.disconnect(timeout=2.0)
        self.stop_loop()
        sock = self._client.socket()
        if sock is not None:
            sock.close()

    # ----------------------------------------------------------------- subscribing

    def subscribe(
        self,
        topic_filter: str,
        qos: int = 0,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        subscription_id: int | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
        timeout: float = WAIT,
    ) -> list[int]:
        """SUBSCRIBE to one filter; returns the SUBACK reason codes (granted QoS or failure)."""
        if self.version == V5:
            options = SubscribeOptions(
                qos=qos,
                noLocal=no_local,
                retainAsPublished=retain_as_published,
                retainHandling=retain_handling,
            )
            values: dict[str, PropInput] = {}
            if subscription_id is not None:
                values["SubscriptionIdentifier"] = subscription_id
            if user_properties:
                values["UserProperty"] = list(user_properties)
            props = build_props(SUBSCRIBE, values) if values else None
            result, mid = self._client.subscribe(topic_filter, options=options, properties=props)
        else:
            result, mid = self._client.subscribe(topic_filter, qos)
        assert result == paho.MQTT_ERR_SUCCESS and mid is not None, f"subscribe failed: {result}"
        return self._wait(lambda: self._subacks.get(mid), f"SUBACK for {topic_filter}", timeout)

    def subscribe_many(
        self, filters: Sequence[tuple[str, int]], timeout: float = WAIT
    ) -> list[int]:
        """One SUBSCRIBE packet carrying several (filter, qos) pairs."""
        if self.version == V5:
            result, mid = self._client.subscribe([(f, SubscribeOptions(qos=q)) for f, q in filters])
        else:
            result, mid = self._client.subscribe(list(filters))
        assert result == paho.MQTT_ERR_SUCCESS and mid is not None, f"subscribe failed: {result}"
        return self._wait(lambda: self._subacks.get(mid), "SUBACK", timeout)

    def unsubscribe(self, *filters: str, timeout: float = WAIT) -> list[int]:
        result, mid = self._client.unsubscribe(list(filters))
        assert result == paho.MQTT_ERR_SUCCESS and mid is not None, f"unsubscribe failed: {result}"
        return self._wait(lambda: self._unsubacks.get(mid), "UNSUBACK", timeout)

    # ----------------------------------------------------------------- publishing

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        *,
        retain: bool = False,
        properties: Mapping[str, PropInput] | None = None,
        timeout: float = WAIT,
    ) -> int:
        """Publish and wait until the flow completes (PUBACK / PUBCOMP / written to the socket).

        Returns the v5 reason code of the final acknowledgement (0 for QoS 0 and for 3.1.1).
        """
        mid = self.publish_nowait(topic, payload, qos, retain=retain, properties=properties)
        return self.wait_published(mid, timeout)

    def publish_nowait(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        *,
        retain: bool = False,
        properties: Mapping[str, PropInput] | None = None,
    ) -> int:
        """Queue a publish in paho and return its message id without waiting."""
        props = build_props(PUBLISH, properties) if properties else None
        info = self._client.publish(topic, payload, qos, retain, props)
        assert info.rc == paho.MQTT_ERR_SUCCESS, f"publish failed locally: {info.rc}"
        return int(info.mid)

    def wait_published(self, mid: int, timeout: float = WAIT) -> int:
        """Wait for completion of ``mid``; returns the final v5 reason code (0 if none)."""
        return self._wait(lambda: self._published.get(mid), f"completion of publish {mid}", timeout)

    # ----------------------------------------------------------------- receiving

    def expect(self, timeout: float = WAIT) -> Message:
        """The next delivered message, waiting at most ``timeout`` seconds."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {timeout}s") from None

    def expect_n(self, count: int, timeout: float = WAIT) -> list[Message]:
        deadline = time.monotonic() + timeout
        got: list[Message] = []
        while len(got) < count:
            remaining = deadline - time.monotonic()
            try:
                got.append(self.messages.get(timeout=max(remaining, 0.001)))
            except queue.Empty:
                raise AssertionError(
                    f"{self.client_id}: got {len(got)} of {count} messages within {timeout}s: "
                    f"{[(m.topic, m.payload[:40]) for m in got]}"
                ) from None
        return got

    def expect_none(self, duration: float = 0.5) -> None:
        """Assert that nothing is delivered for ``duration`` seconds."""
        try:
            msg = self.messages.get(timeout=duration)
        except queue.Empty:
            return
        raise AssertionError(f"{self.client_id}: unexpected message {msg}")

    def collect(self, duration: float) -> list[Message]:
        """Every message that arrives within ``duration`` seconds."""
        deadline = time.monotonic() + duration
        got: list[Message] = []
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                got.append(self.messages.get(timeout=remaining))
            except queue.Empty:
                break
        return got

    def drain(self) -> list[Message]:
        got: list[Message] = []
        while True:
            try:
                got.append(self.messages.get_nowait())
            except queue.Empty:
                return got
