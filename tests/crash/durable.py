"""Durable paho-mqtt 2.x clients that ride out broker crashes the way a real device does.

Each client runs paho's own network thread (``loop_start``) with automatic reconnection, a
persistent session (3.1.1 ``clean_session=False``; 5.0 ``clean_start=False`` with a Session
Expiry Interval) and records everything the test later checks: every CONNACK (tagged with the
broker incarnation that sent it), every acknowledgement of a publisher, every delivery to a
subscriber (duplicates kept). Callbacks never raise (an exception would kill paho's thread);
what goes wrong in them is kept in ``faults`` and reported.

What paho-mqtt 2.2 does when it reconnects (read in
``.venv/lib/python3.11/site-packages/paho/mqtt/client.py``), which the kill test relies on:

* ``reconnect()`` (l. 1536) drops the packets not yet written (``_out_packet.clear()``, l. 1567)
  and calls ``_messages_reconnect_reset()`` before opening the new socket.
* ``_messages_reconnect_reset_out()`` (l. 3720): a QoS 1 message that was sent and awaits
  PUBACK gets ``dup = True`` and is queued for resending; a message never sent keeps DUP 0.
  For QoS 2 *with a persistent session* (``_check_clean_session()``, l. 3711, is false for
  3.1.1 ``clean_session=False`` and 5.0 ``clean_start=False``): awaiting PUBREC -> the PUBLISH
  is resent with DUP 1; awaiting PUBCOMP (PUBREC already received) -> only the PUBREL is
  resent (``mqtt_ms_resend_pubrel``), never the PUBLISH. With a clean session paho would
  restart QoS 2 flows from the PUBLISH, which is why every client here keeps its session.
* ``_messages_reconnect_reset_in()`` (l. 3747): with a persistent session, inbound QoS 2
  messages already answered with PUBREC are kept. paho delivers an inbound QoS 2 message only
  at PUBREL (``_handle_publish`` l. 4099 stores it by packet id, so a DUP resend overwrites it;
  ``_handle_pubrel`` l. 4179 pops it, delivers it once and answers PUBCOMP even for an unknown
  id). A QoS 2 duplicate seen by on_message therefore means the broker re-sent a PUBLISH after
  it had already sent the PUBREL for it, i.e. it lost the PUBREC stage.
* ``_handle_connack()`` (l. 3849): after a successful CONNACK it first calls on_connect, then
  sends every message in state "publish" (QoS 1/2, DUP as set above) and every pending PUBREL
  -- whatever the session-present flag says. So the resend does not depend on the broker
  having kept the session; "session present is 1 after a restart" is checked separately, from
  on_connect's flags. Caveat: the loop returns at the first message in state "queued" (beyond
  ``max_inflight_messages``, l. 3956) and leaves the later ones to the in-flight window; the
  publishers' own window (``WINDOW``) stays below ``MAX_INFLIGHT`` so no message is ever queued.
* ``publish()`` while disconnected (l. 1713, 1811) returns MQTT_ERR_NO_CONN but keeps the
  message, in state "publish": it goes out after the next CONNACK.
* ``on_publish`` fires once per message id, from ``_handle_pubackcomp`` (l. 4401), on PUBACK
  and on PUBCOMP whatever their reason code. ``_handle_pubrec`` (l. 4238) ignores the PUBREC
  reason code and sends PUBREL anyway, so a QoS 2 message refused at PUBREC would still end in
  on_publish (with PUBCOMP 0x92); the publishers' window stays below the broker's
  ``max_awaiting_rel`` (100) so that no refusal is expected. A PUBCOMP 0x92 is also the normal
  answer to a resent PUBREL when the broker completed the flow but crashed before the PUBCOMP
  reached us, so any PUBCOMP counts as the acknowledgement of a QoS 2 message; a PUBACK counts
  only with a reason code below 0x80.
* ``loop_start()`` (l. 2336) makes a new wake-up socket pair without closing the previous one,
  so a client whose loop ended (clean DISCONNECT) closes the old pair before starting again.

A paho 2.2 bug that makes a correct broker look guilty, and how the harness sidesteps it:
``_messages_reconnect_reset_out()`` runs at the start of *every* ``reconnect()`` attempt, and
a failed attempt (connection refused while the broker restarts) is followed by another one.
The first reset turns "awaiting PUBCOMP" into "resend PUBREL"; the second turns "resend PUBREL"
into "publish" (its ``else`` branch) with DUP still 0. paho then re-sends, with the same packet
id, the PUBLISH of a message whose PUBREL it already sent, which MQTT forbids
([MQTT-4.3.3-5]: the sender MUST NOT re-send the PUBLISH once it has sent the PUBREL). A
broker that had already completed that flow must take it for a new message: a QoS 2
duplicate that the broker did not cause (seen in the first runs of this suite: "Sending
PUBREL (Mid: 50)" before the kill, "Sending PUBLISH (d0, q2, r0, m50)" after it). Real
devices retry without knowing when the broker is back, so the harness does not avoid failed
attempts; instead ``_ConformantClient`` keeps "resend PUBREL" across them (the state the first
reset chose, the only one the spec allows), and the verification checks in paho's own packet
log that no publisher ever sent a PUBLISH after the PUBREL of the same message.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from support.brokerproc import HOST

from .process import Incarnation

V311: Final = 4
V5: Final = 5
SESSION_EXPIRY: Final = 3600  # seconds; > 0 makes an MQTT 5 session durable
KEEPALIVE: Final = 30
RECONNECT_MIN: Final = 0.05  # paho's back-off doubles from here...
RECONNECT_MAX: Final = 0.5  # ...up to this, so clients are back soon after a restart
MAX_INFLIGHT: Final = 100  # paho's outgoing window: above WINDOW, so nothing is "queued"
WINDOW: Final = 40  # unacknowledged publications a publisher allows itself (< max_awaiting_rel)
FAULTS_KEPT: Final = 20
TRACE_KEPT: Final = 50_000  # paho's packet log lines kept per client, for failure reports

MsgKey = tuple[str, int]  # (publisher name, sequence number): unique per published message


def encode_payload(key: MsgKey) -> bytes:
    return json.dumps({"pub": key[0], "seq": key[1]}, separators=(",", ":")).encode()


def decode_payload(payload: bytes) -> MsgKey | None:
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    pub, seq = data.get("pub"), data.get("seq")
    if isinstance(pub, str) and isinstance(seq, int) and not isinstance(seq, bool):
        return (pub, seq)
    return None


@dataclass(frozen=True, slots=True)
class Connack:
    incarnation: int  # the broker run current when paho reported it
    session_present: bool
    reason_code: int
    at: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class Published:
    key: MsgKey
    topic: str
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    key: MsgKey | None  # None: a payload this test never produces
    payload: bytes
    qos: int
    dup: bool
    retain: bool
    incarnation: int
    packet_id: int
    at: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class TraceLine:
    at: float  # time.monotonic()
    incarnation: int
    text: str  # paho's log line, e.g. "Sending PUBLISH (d1, q2, r0, m17), ..."


class _ConformantClient(paho.Client):
    """paho's Client, except that a QoS 2 message whose PUBREL is owed stays so across failed
    reconnection attempts (see the module docstring): without this, paho 2.2 re-sends its
    PUBLISH with DUP 0 after the second attempt."""

    def _messages_reconnect_reset_out(self) -> None:
        with self._out_message_mutex:
            for message in self._out_messages.values():
                if message.qos == 2 and message.state == paho.mqtt_ms_resend_pubrel:
                    message.state = paho.mqtt_ms_wait_for_pubcomp  # which the reset keeps
        super()._messages_reconnect_reset_out()


def _paho_client(client_id: str, version: int, durable: bool) -> Any:
    """paho's Client, typed Any here: its annotations (e.g. int reconnect delays) are narrower
    than what it accepts."""
    return _ConformantClient(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if version == V5 else paho.MQTTv311,
        clean_session=None if version == V5 else not durable,
    )


class DurableClient:
    """A paho client with a persistent session, automatic reconnection and a record of it."""

    def __init__(
        self,
        *,
        name: str,
        client_id: str,
        version: int,
        port: int,
        source: str,
        incarnation: Incarnation,
        durable: bool = True,
    ) -> None:
        self.name = name
        self.client_id = client_id
        self.version = version
        self.durable = durable
        self._port = port
        self._source = source
        self._incarnation = incarnation
        self._cond = threading.Condition()
        self._connected = False
        self._connected_in = 0  # incarnation of the last successful CONNACK
        self._loop_started = False
        self.connacks: list[Connack] = []
        self.disconnects = 0
        self.faults: list[str] = []
        self._trace: deque[TraceLine] = deque(maxlen=TRACE_KEPT)
        self._paho = _paho_client(client_id, version, durable)
        self._paho.reconnect_delay_set(min_delay=RECONNECT_MIN, max_delay=RECONNECT_MAX)
        self._paho.max_inflight_messages_set(MAX_INFLIGHT)
        self._paho.max_queued_messages_set(0)  # 0: paho keeps every message until acknowledged
        self._paho.on_connect = self._on_connect
        self._paho.on_disconnect = self._on_disconnect
        self._paho.on_log = self._on_log

    # ------------------------------------------------------------------ paho's thread

    def _fault(self, where: str, exc: BaseException) -> None:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        with self._cond:
            if len(self.faults) < FAULTS_KEPT:
                self.faults.append(f"{where}: {text}")

    def _on_log(self, _c: Any, _u: Any, _level: int, text: str) -> None:
        with contextlib.suppress(Exception):  # deque.append is atomic: no lock needed
            self._trace.append(TraceLine(time.monotonic(), self._incarnation.value, str(text)))

    def trace(self) -> list[TraceLine]:
        return list(self._trace)

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _props: Any) -> None:
        try:
            record = Connack(
                self._incarnation.value,
                bool(flags.session_present),
                int(getattr(reason, "value", reason)),
                time.monotonic(),
            )
            with self._cond:
                self.connacks.append(record)
                if record.reason_code == 0:
                    self._connected = True
                    self._connected_in = record.incarnation
                self._cond.notify_all()
        except Exception as exc:
            self._fault("on_connect", exc)

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, _reason: Any, _props: Any) -> None:
        try:
            with self._cond:
                self._connected = False
                self.disconnects += 1
                self._cond.notify_all()
        except Exception as exc:
            self._fault("on_disconnect", exc)

    # ------------------------------------------------------------------ connection

    def start(self) -> None:
        """Connect in paho's thread; it retries (back-off 0.05..0.5 s) until the broker answers."""
        kwargs: dict[str, Any] = {"bind_address": self._source}
        if self.version == V5:
            kwargs["clean_start"] = not self.durable
            if self.durable:
                make: Any = Properties  # paho's constructor is untyped
                props = make(PacketTypes.CONNECT)
                props.SessionExpiryInterval = SESSION_EXPIRY
                kwargs["properties"] = props
        self._paho.connect_async(HOST, self._port, KEEPALIVE, **kwargs)
        if self._loop_started:
            # the loop ended with our DISCONNECT: close paho's old wake-up socket pair, which
            # loop_start() would otherwise replace without closing (see the module docstring)
            for attr in ("_sockpairR", "_sockpairW"):
                sock = getattr(self._paho, attr, None)
                if sock is not None:
                    sock.close()
                    setattr(self._paho, attr, None)
        self._paho.loop_start()
        self._loop_started = True

    def connected(self) -> bool:
        with self._cond:
            return self._connected

    def wait_connected(self, since_incarnation: int, timeout: float) -> bool:
        """Wait until connected to incarnation ``since_incarnation`` or a later one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self._connected and self._connected_in >= since_incarnation):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))
            return True

    def go_offline(self, timeout: float) -> bool:
        """Send DISCONNECT (the session stays on the broker) and stop paho's thread."""
        self._paho.disconnect()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._connected:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))
        return self._stop_loop(max(deadline - time.monotonic(), 0.5))

    def _stop_loop(self, timeout: float) -> bool:
        """loop_stop() joins paho's thread without a timeout: bound it from a helper thread."""
        helper = threading.Thread(target=self._paho.loop_stop, daemon=True)
        helper.start()
        helper.join(timeout)
        return not helper.is_alive()

    def close(self) -> None:
        """Idempotent, bounded: DISCONNECT if connected, stop the thread, close the socket."""
        with contextlib.suppress(Exception):
            if self._paho.is_connected():
                self._paho.disconnect()
                deadline = time.monotonic() + 2.0
                with self._cond:
                    while self._connected and time.monotonic() < deadline:
                        self._cond.wait(0.05)
        if self._loop_started:
            self._stop_loop(5.0)
        with contextlib.suppress(Exception):
            sock = self._paho.socket()
            if sock is not None:
                sock.close()

    def session_flags(self) -> list[Connack]:
        with self._cond:
            return list(self.connacks)


class Publisher(DurableClient):
    """Publishes ``count`` numbered messages at one QoS, paced, in a thread of its own.

    At most ``WINDOW`` publications are unacknowledged at a time (a device's bounded buffer):
    while the broker is down the publisher fills its window and waits, so the stream goes on
    across every restart. Every ``retain_every``-th message is followed by a retained QoS 1
    message on a topic of its own under ``retain_prefix``.
    """

    def __init__(
        self,
        *,
        qos: int,
        topic: str,
        count: int,
        pace: float,
        retain_prefix: str,
        retain_every: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.qos = qos
        self.topic = topic
        self.count = count
        self.pace = pace
        self.retain_prefix = retain_prefix
        self.retain_every = retain_every
        self._sent: dict[int, Published] = {}
        self._acks: dict[int, int] = {}  # mid -> reason code of PUBACK / PUBCOMP
        self._published_n = 0
        self.done = threading.Event()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._paho.on_publish = self._on_publish

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _props: Any) -> None:
        try:
            with self._cond:
                self._acks[int(mid)] = int(getattr(reason, "value", 0) or 0)
                self._cond.notify_all()
        except Exception as exc:
            self._fault("on_publish", exc)

    def publish(self, topic: str, key: MsgKey, qos: int, *, retain: bool = False) -> int:
        """Hand one message to paho (never while holding our lock: on_publish takes it)."""
        info = self._paho.publish(topic, encode_payload(key), qos, retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise AssertionError(f"{self.name}: paho refused {key}: rc={info.rc}")
        mid = int(info.mid)
        with self._cond:
            assert mid not in self._sent, f"{self.name}: paho reused message id {mid}"
            self._sent[mid] = Published(key, topic, qos, retain)
            self._published_n += 1
        return mid

    def wait_acked(self, mid: int, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in self._acks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.1))
            return self._acks[mid]

    def run_in_thread(self, deadline: float) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(deadline,), name=f"crash-{self.name}", daemon=True
        )
        self._thread.start()

    def halt(self, timeout: float = 5.0) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, deadline: float) -> None:
        try:
            for seq in range(self.count):
                if not self._wait_window(deadline):
                    return
                self.publish(self.topic, (self.name, seq), self.qos)
                if self.retain_every and seq % self.retain_every == self.retain_every // 2:
                    key = (f"{self.name}-retain", seq)
                    self.publish(f"{self.retain_prefix}/{seq}", key, 1, retain=True)
                time.sleep(self.pace)
        except Exception as exc:
            self._fault("publisher thread", exc)
        finally:
            self.done.set()

    def _wait_window(self, deadline: float) -> bool:
        with self._cond:
            while self._published_n - len(self._acks) >= WINDOW:
                if self._halt.is_set():
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if len(self.faults) < FAULTS_KEPT:
                        self.faults.append(f"window of {WINDOW} still full at the deadline")
                    return False
                self._cond.wait(min(remaining, 0.05))
            return not self._halt.is_set()

    # ------------------------------------------------------------------ results (any thread)

    def acked_count(self) -> int:
        with self._cond:
            return len(self._acks)

    def unacked_count(self) -> int:
        with self._cond:
            return self._published_n - len(self._acks)

    def all_acked(self) -> bool:
        with self._cond:
            return self.done.is_set() and self._published_n == len(self._acks)

    def mid_of(self, key: MsgKey) -> int | None:
        with self._cond:
            return next((mid for mid, p in self._sent.items() if p.key == key), None)

    def outcome(self) -> tuple[dict[MsgKey, Published], dict[MsgKey, int], set[MsgKey]]:
        """(every message handed to paho, acknowledged ones -> reason code, refused ones)."""
        with self._cond:
            published = {p.key: p for p in self._sent.values()}
            acked: dict[MsgKey, int] = {}
            refused: set[MsgKey] = set()
            for mid, code in self._acks.items():
                sent = self._sent.get(mid)
                if sent is None:
                    continue
                if sent.qos == 2 or code < 0x80:
                    acked[sent.key] = code
                else:
                    refused.add(sent.key)
            return published, acked, refused


class Subscriber(DurableClient):
    """Subscribes once (before the load) and records every delivery, duplicates included."""

    def __init__(self, *, filters: tuple[tuple[str, int], ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self._subacks: dict[int, list[int]] = {}
        self._received: list[Received] = []
        self._paho.on_message = self._on_message
        self._paho.on_subscribe = self._on_subscribe

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            payload = bytes(msg.payload)
            record = Received(
                topic=str(msg.topic),
                key=decode_payload(payload),
                payload=payload,
                qos=int(msg.qos),
                dup=bool(msg.dup),
                retain=bool(msg.retain),
                incarnation=self._incarnation.value,
                packet_id=int(msg.mid),
                at=time.monotonic(),
            )
            with self._cond:
                self._received.append(record)
                self._cond.notify_all()
        except Exception as exc:
            self._fault("on_message", exc)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _props: Any) -> None:
        try:
            with self._cond:
                self._subacks[int(mid)] = [int(getattr(c, "value", c)) for c in codes]
                self._cond.notify_all()
        except Exception as exc:
            self._fault("on_subscribe", exc)

    def subscribe(self, timeout: float) -> list[int]:
        """One SUBSCRIBE with every filter; returns the SUBACK codes (granted QoS)."""
        if self.version == V5:
            topics: list[Any] = [(f, SubscribeOptions(qos=q)) for f, q in self.filters]
        else:
            topics = list(self.filters)
        result, mid = self._paho.subscribe(topics)
        assert result == paho.MQTT_ERR_SUCCESS and mid is not None, f"{self.name}: {result}"
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in self._subacks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self.name}: no SUBACK within {timeout}s")
                self._cond.wait(min(remaining, 0.1))
            return list(self._subacks[mid])

    def received(self) -> list[Received]:
        with self._cond:
            return list(self._received)

    def received_keys(self) -> Counter[MsgKey]:
        with self._cond:
            return Counter(r.key for r in self._received if r.key is not None)

    def received_count(self) -> int:
        with self._cond:
            return len(self._received)

    def missing(self, keys: set[MsgKey]) -> set[MsgKey]:
        """The keys that have not arrived yet."""
        with self._cond:
            return keys - {r.key for r in self._received if r.key is not None}
