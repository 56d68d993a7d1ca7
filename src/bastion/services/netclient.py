"""The services' MQTT client: one paho-mqtt 2.2 connection (MQTT 5, TLS) that reconnects itself.

``Endpoint`` says where and as whom to connect; ``ServiceClient`` owns the connection in one
thread of its own (bounded retries with backoff, will, birth message, re-subscription) and
offers thread-safe publish/receive. The sensor, alert, door-lock and logger runners use it.
"""

from __future__ import annotations

import contextlib
import queue
import random
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from bastion.errors import BastionError, ConfigError
from bastion.services.readings import StatusMessage

__all__ = [
    "CONNACK_TIMEOUT",
    "CONNECT_TIMEOUT",
    "DEFAULT_PORT",
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

DEFAULT_PORT: Final = 8883
CONNECT_TIMEOUT: Final = 5.0  # TCP connect plus TLS handshake
CONNACK_TIMEOUT: Final = 10.0
DISCONNECT_TIMEOUT: Final = 2.0
STABLE_AFTER: Final = 10.0  # a connection that lasted this long resets the retry budget
POLL_INTERVAL: Final = 0.05  # the longest a publish waits for the I/O thread's select

# CONNACK refusals worth retrying; every other refusal (bad credentials, not authorised,
# banned, bad client id, ...) will not change by itself, so the client gives up at once.
TRANSIENT_REFUSALS: Final = frozenset({0x80, 0x83, 0x88, 0x89, 0x97, 0x9F})

_log = structlog.get_logger("bastion.services.client")


class ConnectError(BastionError):
    """The client could not (re)connect; ``permanent`` if retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and as whom a service connects. TLS is on iff ``cafile`` is set.

    With TLS the server certificate must chain to ``cafile`` and name ``host`` (hostname
    checking is always on); ``certfile``/``keyfile`` add a client certificate.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str = ""
    keepalive: int = 30

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("host must not be empty")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1-65535, got {self.port}")
        if not 0 <= self.keepalive <= 65535:
            raise ConfigError(f"keepalive must be 0-65535 seconds, got {self.keepalive}")
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigError("a client certificate needs both certfile and keyfile")
        if self.certfile is not None and self.cafile is None:
            raise ConfigError("a client certificate needs TLS: give the CA file too")
        if self.password is not None and self.username is None:
            raise ConfigError("a password needs a username")
        if len(self.client_id.encode()) > 65535:
            raise ConfigError("client id is too long")

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS."""
        return self.cafile is not None

    def url(self) -> str:
        """``mqtts://host:port`` (or ``mqtt://``), for logs and messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context (TLS 1.2 minimum, 1.3 preferred), or None without TLS.

        ConfigError (one line) if the CA, certificate or key cannot be loaded.
        """
        if self.cafile is None:
            return None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.cafile))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load CA file {self.cafile}: {_os_reason(exc)}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        if self.certfile is not None and self.keyfile is not None:
            try:
                context.load_cert_chain(str(self.certfile), str(self.keyfile))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cannot load client certificate {self.certfile} with key {self.keyfile}: "
                    f"{_os_reason(exc)}"
                ) from None
        return context


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry schedule: ``first`` seconds, doubling up to ``maximum``, at most ``attempts`` tries.

    The budget applies to the first connection and to each outage after a connection that
    stayed up ``STABLE_AFTER`` seconds; shorter connections keep spending the same budget.
    """

    first: float = 0.5
    maximum: float = 15.0
    attempts: int = 12  # about 100 s of trying (0.5, 1, 2, 4, 8, then 15 s apart)

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.maximum:
            raise ConfigError("backoff needs 0 < first <= maximum")
        if self.attempts < 1:
            raise ConfigError("backoff needs at least one attempt")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (with 20 % jitter)."""
        base = min(self.maximum, self.first * 2.0 ** max(0, failures - 1))
        return base * random.uniform(0.8, 1.0)  # jitter only; not a secret


@dataclass(frozen=True, slots=True)
class Received:
    """An application message as delivered to this client (``qos`` is the delivery QoS)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    user_properties: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class ClientStats:
    """Counters of one client (read them from any thread; they only grow)."""

    connects: int = 0
    connect_failures: int = 0
    connection_losses: int = 0
    published: int = 0
    not_connected: int = 0  # publishes dropped because the client was not connected
    refused: int = 0  # publishes the broker refused (PUBACK/PUBREC reason >= 0x80)
    received: int = 0
    inbox_dropped: int = 0


class Delivery:
    """The fate of one publish: ``accepted`` by the client, ``wait`` for the broker's ack."""

    __slots__ = ("_info",)

    def __init__(self, info: Any = None) -> None:
        self._info = info

    @property
    def accepted(self) -> bool:
        """Whether the message was handed to the connection (False: not connected or full)."""
        return self._info is not None

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the publish to complete (sent for QoS 0,
        PUBACK/PUBCOMP for QoS 1/2); False if it did not."""
        if self._info is None:
            return False
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._published():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.02, left))
        return True

    def _published(self) -> bool:
        try:
            return bool(self._info.is_published())
        except (ValueError, RuntimeError):  # the connection was lost before it went out
            return False


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def describe_socket_error(exc: OSError, endpoint: Endpoint) -> tuple[str, bool]:
    """A one-line reason for a failed TCP/TLS connect and whether retrying cannot help."""
    where = f"{endpoint.host}:{endpoint.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or _os_reason(exc)
        return f"TLS certificate verification failed for {where}: {detail}", True
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {where} failed: {_os_reason(exc)}", False
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where} (is the broker running?)", False
    if isinstance(exc, TimeoutError):
        return f"timed out connecting to {where}", False
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {endpoint.host!r}: {_os_reason(exc)}", False
    return f"cannot connect to {where}: {_os_reason(exc)}", False


def _close_stranded_sockets(exc: BaseException) -> None:
    """Close sockets a failed connect left open in the raising frames.

    paho does not close the TLS socket when the handshake fails; left to the garbage
    collector it would only be closed with a ResourceWarning.
    """
    tb = exc.__traceback__
    while tb is not None:
        for value in list(tb.tb_frame.f_locals.values()):
            if isinstance(value, socket.socket):
                with contextlib.suppress(OSError):
                    value.close()
        tb = tb.tb_next


def _reason_text(reason: Any) -> str:
    value = getattr(reason, "value", None)
    name = str(reason) if reason is not None else "unknown"
    return f"{name} (0x{value:02X})" if isinstance(value, int) else name


class ServiceClient:
    """A paho-mqtt MQTT 5 client driven by one I/O thread of its own.

    ``connect()`` starts the thread and waits for the first CONNACK; after a lost connection
    the thread reconnects on the ``backoff`` schedule, re-subscribes and republishes
    ``birth``. Messages go to ``on_message`` (called on the I/O thread; keep it quick) or,
    without one, to a bounded inbox read by ``receive()``. ``stop()`` sends DISCONNECT;
    ``abort()`` drops the socket without one, so the broker publishes the ``will``.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        will: StatusMessage | None = None,
        birth: StatusMessage | None = None,
        on_message: Callable[[Received], None] | None = None,
        on_connect: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
        inbox_size: int = 1000,
        max_queued: int = 1000,
    ) -> None:
        self.endpoint = endpoint
        self.stats = ClientStats()
        self._backoff = backoff or Backoff()
        self._birth = birth
        self._on_message = on_message
        self._on_connect_hook = on_connect
        self._inbox: queue.Queue[Received] = queue.Queue(maxsize=max(1, inbox_size))
        self._lock = threading.RLock()  # guards every call into paho
        self._connected = threading.Event()
        self._finished = threading.Event()
        self._stop_requested = threading.Event()
        self._abort_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: ConnectError | None = None
        self._connack: tuple[bool, ReasonCode | None] | None = None  # (ok, reason) of this try
        self._lost_reason: str | None = None
        self._last_error: str | None = None
        self._subscriptions: dict[str, int] = {}
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

    def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        """Subscribe now (if connected) and again after every reconnect."""
        with self._lock:
            self._subscriptions[topic_filter] = qos
            if self._connected.is_set():
                self._send_subscribe(((topic_filter, qos),))

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

    def receive(self, timeout: float) -> Received | None:
        """The next inbox message, or None after ``timeout`` seconds."""
        try:
            return self._inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def stop(self, timeout: float = DISCONNECT_TIMEOUT) -> None:
        """Send DISCONNECT (normal: the broker discards the will) and end the I/O thread."""
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
        self._failure = error

    def _session(self) -> ConnectError | None:
        """One connection: connect, wait for CONNACK, serve until it ends.

        Returns a ConnectError if it never got accepted, None once an accepted connection ends.
        """
        self._connack = None
        self._lost_reason = None
        with self._lock:
            try:
                self._client.connect(
                    self.endpoint.host,
                    self.endpoint.port,
                    keepalive=self.endpoint.keepalive,
                    clean_start=True,
                )
            except OSError as exc:
                message, permanent = describe_socket_error(exc, self.endpoint)
                _close_stranded_sockets(exc)
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
            code = getattr(reason, "value", 0x80)
            permanent = code not in TRANSIENT_REFUSALS
            return ConnectError(
                f"{self.endpoint.url()} refused the connection: {_reason_text(reason)}",
                permanent=permanent,
            )
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
            if readable or buffered:
                self._client.loop_read()
            if self._client.socket() is not None and (writable or self._client.want_write()):
                self._client.loop_write()
            if self._client.socket() is not None:
                self._client.loop_misc()
            return self._client.socket() is not None

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

    def _send_subscribe(self, pairs: tuple[tuple[str, int], ...]) -> None:
        if not pairs:
            return
        result, mid = self._client.subscribe(list(pairs))
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._remember(self._pending_subs, mid, tuple(f for f, _ in pairs))

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
        _log.info(
            "client.connected",
            client_id=self.endpoint.client_id,
            url=self.endpoint.url(),
            tls=self._tls_version(),
            session_present=bool(getattr(flags, "session_present", False)),
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
        text = _reason_text(reason)
        if getattr(reason, "value", None) == 0x8E:
            text = f"{text}: another client connected with client id {self.endpoint.client_id!r}"
        self._lost_reason = f"connection lost: {text}"
        if was_connected:
            _log.warning(
                "client.disconnected", client_id=self.endpoint.client_id, reason=self._lost_reason
            )

    def _handle_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            return
        props = getattr(message, "properties", None)
        pairs = getattr(props, "UserProperty", None) or []
        received = Received(
            topic,
            bytes(message.payload),
            int(message.qos),
            bool(message.retain),
            tuple((str(k), str(v)) for k, v in pairs),
        )
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

    def _handle_suback(
        self, _client: Any, _userdata: Any, mid: int, reasons: Any, _props: Any
    ) -> None:
        filters = self._pending_subs.pop(mid, ())
        granted: list[str] = []
        for topic_filter, reason in zip(filters, reasons, strict=False):
            if not reason.is_failure:
                granted.append(topic_filter)
            else:
                _log.warning(
                    "client.subscribe_refused",
                    client_id=self.endpoint.client_id,
                    topic_filter=topic_filter,
                    reason=_reason_text(reason),
                )
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
                reason=_reason_text(reason),
            )


class RunBounds:
    """When a service run ends: ``stop`` is set (SIGINT/SIGTERM) or ``duration`` has passed."""

    __slots__ = ("_deadline", "duration", "stop")

    def __init__(self, stop: threading.Event, duration: float | None = None) -> None:
        self.stop = stop
        self.duration = duration
        self._deadline = None if duration is None else time.monotonic() + duration

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None without a duration."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def done(self) -> bool:
        """Whether the run should end now."""
        left = self.remaining()
        return self.stop.is_set() or (left is not None and left <= 0.0)

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, waking early when the run ends."""
        left = self.remaining()
        self.stop.wait(max(0.0, seconds if left is None else min(seconds, left)))

    def connect(self, client: ServiceClient) -> bool:
        """Connect ``client`` within the run; False if the run ended first (ConnectError if
        the client gave up or the duration passed without a connection)."""
        return client.connect(self.remaining(), cancel=self.stop)
