"""The services' MQTT client: one paho-mqtt 2.2 connection (MQTT 5, TLS) that reconnects itself.

``ServiceClient`` owns the connection in one thread of its own (bounded retries with backoff,
will, birth message, re-subscription, optionally a persistent session with acknowledgements
sent by the service) and offers thread-safe publish/receive/ack. ``endpoint.py`` says where
and as whom it connects, ``delivery.py`` holds what it hands over and ``runbounds.py`` when a
run ends; their names are re-exported here. The sensor, alert, door-lock and logger runners
use it.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bastion.errors import ConfigError
from bastion.services.delivery import ClientStats, Delivery, Received
from bastion.services.endpoint import (
    DEFAULT_PORT,
    TRANSIENT_REFUSALS,
    Backoff,
    ConnectError,
    Endpoint,
    close_stranded_sockets,
    describe_refusal,
    describe_socket_error,
    reason_text,
)
from bastion.services.readings import StatusMessage
from bastion.services.runbounds import RunBounds

__all__ = [
    "CONNACK_TIMEOUT",
    "CONNECT_TIMEOUT",
    "DEFAULT_PORT",
    "MAX_SESSION_EXPIRY",
    "TRANSIENT_REFUSALS",
    "Backoff",
    "ClientStats",
    "ConnectError",
    "Delivery",
    "Endpoint",
    "Received",
    "RunBounds",
    "ServiceClient",
    "describe_socket_error",
]

CONNECT_TIMEOUT: Final = 5.0  # TCP connect plus TLS handshake
CONNACK_TIMEOUT: Final = 10.0
DISCONNECT_TIMEOUT: Final = 2.0
STABLE_AFTER: Final = 10.0  # a connection that lasted this long resets the retry budget
POLL_INTERVAL: Final = 0.05  # the longest a publish or an ack waits for the I/O thread
FAREWELL_TIMEOUT: Final = 2.0  # how long a clean stop waits for the farewell's PUBACK
MAX_SESSION_EXPIRY: Final = 0xFFFFFFFF  # seconds; the broker keeps such a session for ever

_log = structlog.get_logger("bastion.services.client")


@dataclass(frozen=True, slots=True)
class _Subscription:
    qos: int
    retain_handling: int
    required: bool

    def options(self) -> SubscribeOptions:
        return SubscribeOptions(qos=self.qos, retainHandling=self.retain_handling)


class ServiceClient:
    """A paho-mqtt MQTT 5 client driven by one I/O thread of its own.

    ``connect()`` starts the thread and waits for the first CONNACK; after a lost connection
    the thread reconnects on the ``backoff`` schedule, re-subscribes and republishes
    ``birth``. Messages go to ``on_message`` (called on the I/O thread; keep it quick) or,
    without one, to a bounded inbox read by ``receive()``. ``stop()`` publishes ``farewell``
    (a device's retained ``offline``: the will's clean counterpart), then sends DISCONNECT;
    ``abort()`` drops the socket without either, so the broker publishes the ``will``.

    By default every connection starts a new session that ends with it, and paho
    acknowledges QoS 1/2 messages as they arrive. ``clean_start=False`` with a
    ``session_expiry`` (seconds) resumes one session across connections and restarts, and
    ``manual_ack`` leaves the acknowledgement to the service (``ack()``), so the broker keeps
    and redelivers a message until the service has dealt with it.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        will: StatusMessage | None = None,
        birth: StatusMessage | None = None,
        farewell: StatusMessage | None = None,
        on_message: Callable[[Received], None] | None = None,
        on_connect: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
        inbox_size: int = 1000,
        max_queued: int = 1000,
        clean_start: bool = True,
        session_expiry: int = 0,
        manual_ack: bool = False,
    ) -> None:
        if not 0 <= session_expiry <= MAX_SESSION_EXPIRY:
            raise ConfigError(f"session expiry must be 0-{MAX_SESSION_EXPIRY} seconds")
        self.endpoint = endpoint
        self.stats = ClientStats()
        self._backoff = backoff or Backoff()
        self._birth = birth
        self._farewell = farewell
        self._on_message = on_message
        self._on_connect_hook = on_connect
        self._clean_start = clean_start
        self._connect_properties = _session_properties(session_expiry)
        self._manual_ack = manual_ack
        self._inbox: queue.Queue[Received] = queue.Queue(maxsize=max(1, inbox_size))
        self._acks: deque[Received] = deque()  # appended by any thread, sent by the I/O thread
        self._lock = threading.RLock()  # guards every call into paho
        self._connected = threading.Event()
        self._finished = threading.Event()
        self._stop_requested = threading.Event()
        self._abort_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: ConnectError | None = None
        self._connection = 0  # number of the current connection (attempt)
        self._session_present = False
        self._connack: tuple[bool, ReasonCode | None] | None = None  # (ok, reason) of this try
        self._lost_reason: str | None = None
        self._last_error: str | None = None
        self._subscriptions: dict[str, _Subscription] = {}
        self._pending_subs: OrderedDict[int, tuple[str, ...]] = OrderedDict()
        self._pending_pubs: OrderedDict[int, str] = OrderedDict()
        self._inbox_full_logged = False
        self._client = self._make_client(endpoint, will, max_queued)

    # -- set-up ---------------------------------------------------------------------------

    def _make_client(self, endpoint: Endpoint, will: StatusMessage | None, max_queued: int) -> Any:
        context = endpoint.ssl_context()
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=endpoint.client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
            manual_ack=self._manual_ack,
        )
        client.connect_timeout = CONNECT_TIMEOUT
        client.max_queued_messages_set(max(0, max_queued))
        if context is not None:
            client.tls_set_context(context)
        if endpoint.username is not None:
            client.username_pw_set(endpoint.username, endpoint.password)
        if will is not None:
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        client.on_connect = self._handle_connack
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_subscribe = self._handle_suback
        client.on_publish = self._handle_puback
        return client

    # -- public API -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a CONNACK accepted the current connection."""
        return self._connected.is_set()

    @property
    def session_present(self) -> bool:
        """Whether the last accepted CONNACK resumed a session the broker had kept."""
        return self._session_present

    @property
    def failure(self) -> ConnectError | None:
        """Why the client gave up (None while it is running or after a clean stop)."""
        return self._failure

    @property
    def finished(self) -> bool:
        """Whether the I/O thread has ended (stopped, aborted or gave up)."""
        return self._finished.is_set()

    def connect(self, timeout: float | None = None, cancel: threading.Event | None = None) -> bool:
        """Start the I/O thread and wait for the first accepted CONNACK.

        True when connected; False if ``cancel`` was set first. Raises ConnectError if the
        client gave up or ``timeout`` seconds passed without a connection.
        """
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._connected.wait(0.05):
            if self._failure is not None:
                raise self._failure
            if cancel is not None and cancel.is_set():
                return False
            if self._finished.is_set():
                raise ConnectError(f"{self.endpoint.url()}: client stopped before connecting")
            if deadline is not None and time.monotonic() >= deadline:
                last = self._last_error or "no answer yet"
                raise ConnectError(
                    f"not connected to {self.endpoint.url()} within {timeout:.1f}s: {last}"
                )
        return True

    def start(self) -> None:
        """Start the I/O thread (once); it connects and keeps reconnecting on its own."""
        if self._thread is None:
            if not self.endpoint.tls:
                _log.warning(
                    "client.tls_off",
                    client_id=self.endpoint.client_id,
                    url=self.endpoint.url(),
                    hint="no CA file given: credentials and data travel in clear text",
                )
            name = f"mqtt-{self.endpoint.client_id or 'client'}"
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def subscribe(
        self,
        topic_filter: str,
        qos: int = 0,
        *,
        retain_handling: int = 0,
        required: bool = False,
    ) -> None:
        """Subscribe now (if connected) and again after every reconnect.

        ``retain_handling`` is MQTT 5's option (0: send retained messages, 1: only for a new
        subscription, 2: never). If a ``required`` subscription is refused, the client
        gives up (``failure``): the service cannot do its job without it.
        """
        subscription = _Subscription(qos, retain_handling, required)
        with self._lock:
            self._subscriptions[topic_filter] = subscription
            if self._connected.is_set():
                self._send_subscribe(((topic_filter, subscription),))

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Delivery:
        """Publish if connected; a not-accepted Delivery if not (nothing is queued offline)."""
        if not self._connected.is_set():
            self.stats.not_connected += 1
            return Delivery()
        with self._lock:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.stats.not_connected += 1
                return Delivery()
            if qos > 0:
                self._remember(self._pending_pubs, info.mid, topic)
            self.stats.published += 1
        return Delivery(info)

    def ack(self, message: Received) -> None:
        """Acknowledge ``message`` (with ``manual_ack``): PUBACK for QoS 1, PUBCOMP for QoS 2.

        Safe from any thread and never blocks: the I/O thread sends acknowledgements in the
        order they were made, within ``POLL_INTERVAL``, and before a clean DISCONNECT. One
        for a connection that has ended is dropped: the broker redelivers the message.
        """
        if self._manual_ack and message.qos > 0:
            self._acks.append(message)

    def receive(self, timeout: float) -> Received | None:
        """The next inbox message, or None after ``timeout`` seconds."""
        try:
            return self._inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def stop(self, timeout: float = DISCONNECT_TIMEOUT) -> None:
        """Publish the ``farewell`` (if connected; its ack awaited up to ``FAREWELL_TIMEOUT``),
        send DISCONNECT (normal: the broker discards the will) and end the I/O thread."""
        farewell = self._farewell
        if farewell is not None and self.connected and not self._stop_requested.is_set():
            delivery = self.publish(farewell.topic, farewell.payload, farewell.qos, farewell.retain)
            delivery.wait(FAREWELL_TIMEOUT)
        self._stop_requested.set()
        self._join(timeout)

    def abort(self, timeout: float = DISCONNECT_TIMEOUT) -> None:
        """Drop the connection without DISCONNECT (the broker publishes the will) and end."""
        self._abort_requested.set()
        self._stop_requested.set()
        self._join(timeout)

    def _join(self, timeout: float) -> None:
        thread = self._thread
        if thread is None:
            self._finished.set()
            return
        thread.join(timeout + CONNECT_TIMEOUT + 1.0)

    # -- the I/O thread ---------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        try:
            while not self._stop_requested.is_set():
                started = time.monotonic()
                error = self._session()
                if self._stop_requested.is_set():
                    break
                if error is None:  # a connection that ended; was it stable?
                    self.stats.connection_losses += 1
                    if time.monotonic() - started >= STABLE_AFTER:
                        failures = 0
                    failures += 1
                    reason = self._lost_reason or "connection lost"
                    if failures >= self._backoff.attempts:
                        self._give_up(ConnectError(f"{reason}; giving up after {failures} tries"))
                        return
                    self._wait_retry(failures, reason, event="client.reconnecting")
                    continue
                failures += 1
                self.stats.connect_failures += 1
                if error.permanent or failures >= self._backoff.attempts:
                    if not error.permanent:
                        error = ConnectError(f"{error}; giving up after {failures} attempts")
                    self._log_failure(str(error), failures, None, error.permanent)
                    self._give_up(error)
                    return
                self._wait_retry(failures, str(error), event="client.connect_failed")
        finally:
            self._connected.clear()
            self._close_quietly()
            self._finished.set()

    def _wait_retry(self, failures: int, reason: str, *, event: str) -> None:
        delay = self._backoff.delay(failures)
        if event == "client.connect_failed":
            self._log_failure(reason, failures, delay, False)
        else:
            _log.info(
                event,
                client_id=self.endpoint.client_id,
                reason=reason,
                attempt=failures,
                retry_in=round(delay, 2),
            )
        self._stop_requested.wait(delay)

    def _log_failure(
        self, reason: str, attempt: int, retry_in: float | None, permanent: bool
    ) -> None:
        self._last_error = reason
        _log.warning(
            "client.connect_failed",
            client_id=self.endpoint.client_id,
            url=self.endpoint.url(),
            reason=reason,
            attempt=attempt,
            retry_in=None if retry_in is None else round(retry_in, 2),
            permanent=permanent,
        )

    def _give_up(self, error: ConnectError) -> None:
        if self._failure is None:
            self._failure = error

    def _session(self) -> ConnectError | None:
        """One connection: connect, wait for CONNACK, serve until it ends.

        Returns a ConnectError if it never got accepted, None once an accepted connection ends.
        """
        self._connack = None
        self._lost_reason = None
        with self._lock:
            self._connection += 1  # acknowledgements still queued for the last one are void
            try:
                self._client.connect(
                    self.endpoint.host,
                    self.endpoint.port,
                    keepalive=self.endpoint.keepalive,
                    clean_start=self._clean_start,
                    properties=self._connect_properties,
                )
            except OSError as exc:
                message, permanent = describe_socket_error(exc, self.endpoint)
                close_stranded_sockets(exc)
                self._close_quietly()
                return ConnectError(message, permanent=permanent)
            except ValueError as exc:  # e.g. a hostname the certificate does not name
                self._close_quietly()
                return ConnectError(
                    f"cannot connect to {self.endpoint.url()}: {exc}", permanent=True
                )
        deadline = time.monotonic() + CONNACK_TIMEOUT
        while self._connack is None:
            if self._stop_requested.is_set():
                self._finish_connection()
                return None
            if not self._io_step() and self._connack is None:
                reason = self._lost_reason or "connection closed before CONNACK"
                return ConnectError(f"{self.endpoint.url()}: {reason}")
            if time.monotonic() >= deadline:
                self._close_quietly()
                return ConnectError(
                    f"{self.endpoint.url()}: no CONNACK within {CONNACK_TIMEOUT:g}s"
                )
        ok, reason = self._connack
        if not ok:
            self._close_quietly()
            return describe_refusal(reason, self.endpoint)
        while not self._stop_requested.is_set():
            if not self._io_step():
                self._connected.clear()
                return None
        self._finish_connection()
        return None

    def _io_step(self) -> bool:
        """Wait for the socket briefly and let paho read, write and ping; False once closed."""
        sock = self._client.socket()
        if sock is None:
            return False
        # TLS may hold decrypted bytes the kernel no longer reports as readable.
        buffered = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        try:
            readable, writable, _ = select.select(
                [sock],
                [sock] if self._client.want_write() else [],
                [],
                0.0 if buffered else POLL_INTERVAL,
            )
        except (OSError, ValueError):  # the socket was closed under us
            readable, writable = [sock], []
        with self._lock:
            if self._client.socket() is None:
                return False
            self._send_acks()
            if readable or buffered:
                self._client.loop_read()
            if self._client.socket() is not None and (writable or self._client.want_write()):
                self._client.loop_write()
            if self._client.socket() is not None:
                self._client.loop_misc()
            return self._client.socket() is not None

    def _send_acks(self) -> None:
        """Send the acknowledgements ``ack()`` queued for this connection (under the lock)."""
        while self._acks:
            message = self._acks.popleft()
            if message.connection == self._connection and self._client.socket() is not None:
                self._client.ack(message.mid, message.qos)

    def _finish_connection(self) -> None:
        """Leave the connection: DISCONNECT on ``stop()``, a bare close on ``abort()``."""
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._abort_requested.is_set():
            self._drop_socket()
            reason = "aborted"
        else:
            with self._lock:
                if self._client.socket() is None:
                    return
                self._send_acks()
                self._client.disconnect(
                    reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection")
                )
            deadline = time.monotonic() + DISCONNECT_TIMEOUT
            while time.monotonic() < deadline and self._io_step():
                pass
            reason = "normal"
        if was_connected:
            _log.info("client.disconnected", client_id=self.endpoint.client_id, reason=reason)

    def _drop_socket(self) -> None:
        with self._lock:
            sock = self._client.socket()
            if sock is None:
                return
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # FIN without DISCONNECT: the will fires
        deadline = time.monotonic() + DISCONNECT_TIMEOUT
        while time.monotonic() < deadline and self._io_step():
            pass
        self._close_quietly()

    def _close_quietly(self) -> None:
        """Close a socket paho still holds (a refused or timed-out connect, a failed abort)."""
        with self._lock:
            if self._client.socket() is not None:
                with contextlib.suppress(OSError):
                    self._client._sock_close()  # paho has no public close without DISCONNECT

    def _send_subscribe(self, items: tuple[tuple[str, _Subscription], ...]) -> None:
        if not items:
            return
        result, mid = self._client.subscribe([(f, s.options()) for f, s in items])
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._remember(self._pending_subs, mid, tuple(f for f, _ in items))

    @staticmethod
    def _remember(table: OrderedDict[int, Any], mid: int, value: Any) -> None:
        table[mid] = value
        while len(table) > 10_000:
            table.popitem(last=False)

    def _call_safely(self, hook: Callable[[], None]) -> None:
        """Run a service hook on the I/O thread; a bug in it is logged, never kills the thread."""
        try:
            hook()
        except Exception as exc:
            _log.exception("client.hook_failed", client_id=self.endpoint.client_id, error=str(exc))

    # -- paho callbacks (run on the I/O thread, under the lock) -----------------------------

    def _handle_connack(
        self, _client: Any, _userdata: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        ok = not reason.is_failure
        self._connack = (ok, reason)
        if not ok:
            return
        self.stats.connects += 1
        self._session_present = bool(getattr(flags, "session_present", False))
        _log.info(
            "client.connected",
            client_id=self.endpoint.client_id,
            url=self.endpoint.url(),
            tls=self._tls_version(),
            session_present=self._session_present,
        )
        self._send_subscribe(tuple(self._subscriptions.items()))
        if self._birth is not None:
            b = self._birth
            self._client.publish(b.topic, b.payload, qos=b.qos, retain=b.retain)
        self._connected.set()
        if self._on_connect_hook is not None:
            self._call_safely(self._on_connect_hook)

    def _tls_version(self) -> str | None:
        sock = self._client.socket()
        return sock.version() if isinstance(sock, ssl.SSLSocket) else None

    def _handle_disconnect(
        self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._stop_requested.is_set():  # our own stop() or abort(): logged by the I/O loop
            return
        text = reason_text(reason)
        if getattr(reason, "value", None) == 0x8E:
            text = f"{text}: another client connected with client id {self.endpoint.client_id!r}"
        self._lost_reason = f"connection lost: {text}"
        if was_connected:
            _log.warning(
                "client.disconnected", client_id=self.endpoint.client_id, reason=self._lost_reason
            )

    def _handle_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        try:
            received = Received.from_paho(message, self._connection)
        except UnicodeDecodeError:
            self._skip_bad_topic(message)
            return
        self.stats.received += 1
        if self._on_message is not None:
            on_message = self._on_message
            self._call_safely(lambda: on_message(received))
            return
        try:
            self._inbox.put_nowait(received)
            self._inbox_full_logged = False
        except queue.Full:
            self.stats.inbox_dropped += 1
            if not self._inbox_full_logged:
                self._inbox_full_logged = True
                _log.warning(
                    "client.inbox_full", client_id=self.endpoint.client_id, size=self._inbox.maxsize
                )

    def _skip_bad_topic(self, message: Any) -> None:
        """A topic that is not UTF-8 (a broker bug): skipped, acknowledged, logged once."""
        self.stats.bad_topics += 1
        if self._manual_ack and message.qos:
            self._client.ack(int(message.mid), int(message.qos))  # else it is redelivered
        if self.stats.bad_topics == 1:
            _log.warning(
                "client.bad_topic",
                client_id=self.endpoint.client_id,
                reason="topic is not UTF-8; message skipped",
            )

    def _handle_suback(
        self, _client: Any, _userdata: Any, mid: int, reasons: Any, _props: Any
    ) -> None:
        filters = self._pending_subs.pop(mid, ())
        granted: list[str] = []
        for topic_filter, reason in zip(filters, reasons, strict=False):
            if not reason.is_failure:
                granted.append(topic_filter)
                continue
            _log.warning(
                "client.subscribe_refused",
                client_id=self.endpoint.client_id,
                topic_filter=topic_filter,
                reason=reason_text(reason),
            )
            subscription = self._subscriptions.get(topic_filter)
            if subscription is not None and subscription.required:
                self._give_up(
                    ConnectError(
                        f"{self.endpoint.url()} refused the subscription to {topic_filter}: "
                        f"{reason_text(reason)}; this client needs read access to {topic_filter}",
                        permanent=True,
                    )
                )
                self._stop_requested.set()  # the I/O loop sends DISCONNECT and ends
        if granted:
            _log.info("client.subscribed", client_id=self.endpoint.client_id, filters=granted)

    def _handle_puback(
        self, _client: Any, _userdata: Any, mid: int, reason: Any, _props: Any
    ) -> None:
        topic = self._pending_pubs.pop(mid, None)
        if reason is not None and reason.is_failure:
            self.stats.refused += 1
            _log.warning(
                "client.publish_refused",
                client_id=self.endpoint.client_id,
                topic=topic,
                reason=reason_text(reason),
            )


def _session_properties(session_expiry: int) -> Properties | None:
    """CONNECT properties: a Session Expiry Interval when the session should outlive the
    connection (0, the default, needs none)."""
    if not session_expiry:
        return None
    make: Any = Properties  # paho's constructor is untyped
    properties: Properties = make(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = session_expiry
    return properties
