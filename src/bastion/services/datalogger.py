"""The data logger as a network client: a persistent MQTT session on ``#``, batched into the
encrypted store of ``storage.logstore``.

``SessionSubscriber`` owns the connection (paho-mqtt 2.2, MQTT 5, clean start off, manual
acknowledgement; ``netclient.Endpoint`` says where and as whom). ``DataLogger`` commits what
it hands over in batches and only then acknowledges the QoS 1 deliveries. ``run_logger``
ties both to a stop event; ``cli/logger.py`` calls it.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bastion.services.netclient import (
    CONNACK_TIMEOUT,
    CONNECT_TIMEOUT,
    TRANSIENT_REFUSALS,
    Backoff,
    ConnectError,
    Endpoint,
    describe_socket_error,
)
from bastion.storage.errors import StorageError
from bastion.storage.logstore import LoggedMessage, LogStore

__all__ = ["DataLogger", "Inbound", "LoggerSettings", "SessionSubscriber", "run_logger"]

log = structlog.get_logger("bastion.logger")

SUBSCRIBE_FILTER: Final = "#"
SUBSCRIBE_QOS: Final = 1
RECONNECT_MIN: Final = 1
RECONNECT_MAX: Final = 30
RECONNECT_ATTEMPTS: Final = 60
"""Failed reconnects in a row before the logger gives up (about half an hour at 30 s)."""
POLL: Final = 0.2
STORE_RETRY_MAX: Final = 10.0
_NORMAL = ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection")


@dataclass(frozen=True, slots=True)
class LoggerSettings:
    """How the logger batches and how long it keeps messages."""

    batch_size: int = 200
    flush_interval: float = 1.0
    """Longest a received message waits before its batch is committed (seconds)."""
    retention: timedelta | None = None
    """Delete messages older than this (None: keep them)."""
    max_bytes: int | None = None
    """Delete the oldest messages while the stored ones count more than this."""
    session_expiry: int = 3600
    """Session Expiry Interval sent in CONNECT: how long the broker queues for us offline."""
    retention_every: float = 60.0
    queue_size: int = 10_000
    """Received messages waiting for their batch; when full, reading from the broker waits."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.flush_interval <= 0 or self.queue_size < 1:
            raise ValueError("batch_size, flush_interval and queue_size must be positive")


@dataclass(frozen=True, slots=True)
class Inbound:
    """A received message and how to acknowledge it (None: QoS 0, nothing to acknowledge)."""

    message: LoggedMessage
    ack: Callable[[], None] | None = None


class DataLogger:
    """Batches ``Inbound`` messages into a ``LogStore``; ``run`` is the writer loop.

    A batch is committed when it holds ``batch_size`` messages or its first message has
    waited ``flush_interval``; its QoS 1 messages are acknowledged after the commit, so the
    broker keeps (and redelivers) anything not yet durable. A failing store is retried with
    backoff, never crashes the loop; retention runs every ``retention_every`` seconds.
    """

    def __init__(
        self,
        store: LogStore,
        settings: LoggerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._queue: queue.Queue[Inbound] = queue.Queue(maxsize=settings.queue_size)
        self._next_retention = clock()
        self._backlog_logged = False
        self.total = 0
        """Messages committed by this logger so far."""
        self.batches = 0
        self.dropped = 0
        """Messages received while stopping, left unacknowledged (QoS 1: redelivered)."""

    def offer(self, item: Inbound, stop: threading.Event) -> bool:
        """Queue ``item`` for the next batch, waiting while the queue is full (which holds
        the connection back: backpressure); False if ``stop`` is set first."""
        while not stop.is_set():
            try:
                self._queue.put(item, timeout=POLL)
                return True
            except queue.Full:
                if not self._backlog_logged:
                    self._backlog_logged = True
                    log.warning("logger.backlog_full", size=self._settings.queue_size)
        self.dropped += 1
        return False

    def run(
        self,
        stop: threading.Event,
        until: float | None = None,
        healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        """Commit batches until ``stop`` is set, the clock reaches ``until`` or ``healthy``
        says no; then commit what is queued."""
        while not stop.is_set() and healthy() and (until is None or self._clock() < until):
            batch = self._collect(stop, until)
            if batch:
                self._commit(batch, stop)
            self._retain()
        while batch := self._drain():
            self._commit(batch, None)

    def _collect(self, stop: threading.Event, until: float | None) -> list[Inbound]:
        try:
            first = self._queue.get(timeout=POLL)
        except queue.Empty:
            return []
        batch = [first]
        window = self._clock() + self._settings.flush_interval
        if until is not None:
            window = min(window, until)
        while len(batch) < self._settings.batch_size and not stop.is_set():
            left = window - self._clock()
            if left <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=min(left, POLL)))
            except queue.Empty:
                continue
        return batch

    def _drain(self) -> list[Inbound]:
        batch: list[Inbound] = []
        while len(batch) < self._settings.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _commit(self, batch: list[Inbound], stop: threading.Event | None) -> None:
        delay = 0.5
        while True:
            started = self._clock()
            try:
                self._store.append([item.message for item in batch])
                break
            except StorageError as error:
                log.error("logger.store_failed", error=str(error), count=len(batch), retry_in=delay)
                if stop is None or stop.wait(delay):
                    log.error("logger.batch_unstored", count=len(batch))
                    return  # unacknowledged: the broker redelivers the QoS 1 ones
                delay = min(delay * 2, STORE_RETRY_MAX)
        for item in batch:
            if item.ack is not None:
                item.ack()
        self.total += len(batch)
        self.batches += 1
        self._backlog_logged = False
        log.info(
            "logger.stored",
            count=len(batch),
            total=self.total,
            ms=round((self._clock() - started) * 1000, 1),
        )

    def _retain(self) -> None:
        settings = self._settings
        if settings.retention is None and settings.max_bytes is None:
            return
        now = self._clock()
        if now < self._next_retention:
            return
        self._next_retention = now + settings.retention_every
        cutoff = None if settings.retention is None else datetime.now(UTC) - settings.retention
        try:
            result = self._store.purge(older_than=cutoff, max_bytes=settings.max_bytes)
        except StorageError as error:
            log.error("logger.purge_failed", error=str(error))
            return
        if result.by_age or result.by_size:
            log.info(
                "logger.purged",
                by_age=result.by_age,
                by_size=result.by_size,
                messages=result.left.messages,
                bytes=result.left.bytes,
            )


def _safely(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """paho calls callbacks in its loop thread and dies on their exceptions: log instead."""

    def wrap(func: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            try:
                func(*args)
            except Exception as error:
                log.exception("client.callback_failed", callback=name, error=str(error))

        return call

    return wrap


class SessionSubscriber:
    """One MQTT 5 session subscribed to ``#`` at QoS 1 that survives restarts of either side.

    CONNECT has clean start off and a session expiry, so while the logger is away the broker
    queues QoS 1 messages for it. paho runs the connection in its thread and reconnects
    with backoff (1-30 s, giving up after ``RECONNECT_ATTEMPTS`` failures in a row); a
    refusal that retrying cannot fix (bad credentials, no permission to read ``#``) ends it.
    Acknowledgements are manual: ``Inbound.ack`` sends the PUBACK, unless the connection it
    came on is gone (the broker then redelivers the message on the new one).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        deliver: Callable[[Inbound], object],
        *,
        session_expiry: int = 3600,
        backoff: Backoff | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._deliver = deliver
        self._session_expiry = session_expiry
        self._backoff = backoff or Backoff(first=0.5, maximum=5.0, attempts=10)
        self._connected = threading.Event()
        self._failure: ConnectError | None = None
        self._failures = 0
        self._generation = 0
        self._stopping = False
        self._started = False
        self._bad_topic_logged = False
        self._client = self._make_client()

    def _make_client(self) -> Any:
        endpoint = self.endpoint
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=endpoint.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
            reconnect_on_failure=True,
        )
        client.connect_timeout = CONNECT_TIMEOUT
        client.reconnect_delay_set(RECONNECT_MIN, RECONNECT_MAX)
        context = endpoint.ssl_context()
        if context is not None:
            client.tls_set_context(context)
        if endpoint.username is not None:
            client.username_pw_set(endpoint.username, endpoint.password)
        client.on_connect = _safely("on_connect")(self._on_connect)
        client.on_connect_fail = _safely("on_connect_fail")(self._on_connect_fail)
        client.on_disconnect = _safely("on_disconnect")(self._on_disconnect)
        client.on_message = _safely("on_message")(self._on_message)
        client.on_subscribe = _safely("on_subscribe")(self._on_subscribe)
        return client

    @property
    def failure(self) -> ConnectError | None:
        """Why the subscriber gave up (None while it runs)."""
        return self._failure

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def connect(self, cancel: threading.Event, deadline: float | None = None) -> bool:
        """Connect (retrying on the backoff schedule) and start the connection thread.

        True once the broker accepted us; False if ``cancel`` was set or ``deadline``
        (``time.monotonic``) passed first; ``ConnectError`` if it gave up.
        """
        make: Any = Properties  # paho's constructor is untyped
        properties = make(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self._session_expiry
        failures = 0
        while not self._started:
            if cancel.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return False
            try:
                self._client.connect(
                    self.endpoint.host,
                    self.endpoint.port,
                    keepalive=self.endpoint.keepalive,
                    clean_start=False,
                    properties=properties,
                )
            except (OSError, ValueError) as exc:
                if isinstance(exc, OSError):
                    reason, permanent = describe_socket_error(exc, self.endpoint)
                else:  # e.g. a host name the certificate does not cover
                    reason, permanent = f"cannot connect to {self.endpoint.url()}: {exc}", True
                failures += 1
                if permanent or failures >= self._backoff.attempts:
                    raise ConnectError(reason, permanent=permanent) from None
                delay = self._backoff.delay(failures)
                log.warning(
                    "client.connect_failed",
                    client_id=self.endpoint.client_id,
                    url=self.endpoint.url(),
                    reason=reason,
                    attempt=failures,
                    retry_in=round(delay, 2),
                )
                cancel.wait(delay)
                continue
            self._started = True
            self._client.loop_start()
        return self._await_connack(cancel, deadline)

    def _await_connack(self, cancel: threading.Event, deadline: float | None) -> bool:
        limit = time.monotonic() + CONNACK_TIMEOUT * self._backoff.attempts
        while not self._connected.wait(0.05):
            if self._failure is not None:
                raise self._failure
            if cancel.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return False
            if time.monotonic() >= limit:
                raise ConnectError(f"{self.endpoint.url()}: no accepted CONNACK")
        return True

    def stop(self) -> None:
        """DISCONNECT normally (the broker keeps the session for ``session_expiry``) and end
        the connection thread."""
        self._stopping = True
        if not self._started:
            return
        self._client.disconnect(reasoncode=_NORMAL)
        self._client.loop_stop()
        self._started = False

    # ------------------------------------------------------------- paho callbacks

    def _give_up(self, error: ConnectError) -> None:
        if self._failure is None:
            self._failure = error
            log.error(
                "client.connect_failed",
                client_id=self.endpoint.client_id,
                url=self.endpoint.url(),
                reason=str(error),
                permanent=error.permanent,
            )
        self._client.disconnect()  # ends paho's loop instead of reconnecting

    def _on_connect(self, _client: Any, _userdata: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            code = getattr(reason, "value", 0x80)
            self._failures += 1
            text = f"{self.endpoint.url()} refused the connection: {reason} (0x{code:02X})"
            if code not in TRANSIENT_REFUSALS or self._failures >= RECONNECT_ATTEMPTS:
                self._give_up(ConnectError(text, permanent=code not in TRANSIENT_REFUSALS))
            else:
                log.warning(
                    "client.connect_failed",
                    client_id=self.endpoint.client_id,
                    reason=text,
                    attempt=self._failures,
                )
            return
        self._failures = 0
        sock = self._client.socket()
        log.info(
            "client.connected",
            client_id=self.endpoint.client_id,
            url=self.endpoint.url(),
            tls=sock.version() if hasattr(sock, "version") else None,
            session_present=bool(getattr(flags, "session_present", False)),
        )
        # Retain handling 1: retained messages only for a new subscription, so a resumed
        # session does not log every retained message again.
        options = SubscribeOptions(qos=SUBSCRIBE_QOS, retainHandling=1)
        self._client.subscribe(SUBSCRIBE_FILTER, options=options)
        self._connected.set()

    def _on_connect_fail(self, _client: Any, _userdata: Any) -> None:
        self._failures += 1
        if self._failures >= RECONNECT_ATTEMPTS:
            self._give_up(
                ConnectError(
                    f"cannot reconnect to {self.endpoint.url()}; giving up "
                    f"after {self._failures} attempts"
                )
            )
        else:
            log.warning(
                "client.reconnecting",
                client_id=self.endpoint.client_id,
                url=self.endpoint.url(),
                attempt=self._failures,
            )

    def _on_disconnect(self, _client: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        self._generation += 1  # PUBACKs still pending belong to the old connection
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected:
            level = log.info if self._stopping else log.warning
            level("client.disconnected", client_id=self.endpoint.client_id, reason=str(reason))

    def _on_subscribe(self, _client: Any, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        for reason in reasons:
            if reason.is_failure:
                self._give_up(
                    ConnectError(
                        f"{self.endpoint.url()} refused the subscription to {SUBSCRIBE_FILTER}: "
                        f"{reason} (0x{reason.value:02X}); the logger needs read access to #",
                        permanent=True,
                    )
                )

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        qos, mid = int(message.qos), int(message.mid)
        try:
            topic = message.topic
        except UnicodeDecodeError:
            if not self._bad_topic_logged:
                self._bad_topic_logged = True
                log.warning("logger.bad_topic", reason="topic is not UTF-8; message skipped")
            if qos:
                self._client.ack(mid, qos)
            return
        props = getattr(message, "properties", None)
        content_type = getattr(props, "ContentType", None)
        pairs = getattr(props, "UserProperty", None) or []
        logged = LoggedMessage(
            topic=topic,
            payload=bytes(message.payload),
            qos=qos,
            retain=bool(message.retain),
            received_at=datetime.now(UTC),
            content_type=content_type if isinstance(content_type, str) else None,
            user_properties=tuple((str(key), str(value)) for key, value in pairs),
        )
        ack = None
        if qos:
            ack = functools.partial(self._ack, mid, qos, self._generation)
        self._deliver(Inbound(logged, ack))

    def _ack(self, mid: int, qos: int, generation: int) -> None:
        if generation == self._generation and self._connected.is_set():
            self._client.ack(mid, qos)


def run_logger(
    endpoint: Endpoint,
    store: LogStore,
    settings: LoggerSettings,
    *,
    stop: threading.Event,
    duration: float | None = None,
) -> int:
    """Run the data logger until ``stop`` is set or ``duration`` seconds have passed: commit
    what is queued, DISCONNECT, and return how many messages were stored.

    Raises ``ConnectError`` if the broker cannot be reached or refuses us for good.
    """
    until = None if duration is None else time.monotonic() + duration
    logger = DataLogger(store, settings)
    subscriber = SessionSubscriber(
        endpoint,
        lambda item: logger.offer(item, stop),
        session_expiry=settings.session_expiry,
    )
    log.info(
        "logger.started",
        database=store.description,
        data_key=store.current_key_id,
        client_id=endpoint.client_id,
        url=endpoint.url(),
        batch_size=settings.batch_size,
    )
    try:
        if subscriber.connect(stop, until):
            logger.run(stop, until, healthy=lambda: subscriber.failure is None)
    finally:
        subscriber.stop()
    if subscriber.failure is not None:
        raise subscriber.failure
    log.info("logger.stopped", total=logger.total, batches=logger.batches)
    return logger.total
