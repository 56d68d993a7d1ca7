"""The data logger as a network client: a persistent MQTT session on ``#``, batched into the
encrypted store of ``storage.logstore``.

``SessionSubscriber`` is the connection: a ``netclient.ServiceClient`` with clean start off, a
session expiry and manual acknowledgement. ``DataLogger`` commits what it hands over in
batches and only then acknowledges the QoS 1 deliveries. ``run_logger`` ties both to the
run's ``RunBounds``; ``cli/logger.py`` calls it.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import structlog

from bastion.services.endpoint import Backoff, ConnectError, Endpoint
from bastion.services.netclient import Received, RunBounds, ServiceClient
from bastion.storage.errors import StorageError
from bastion.storage.logstore import LoggedMessage, LogStore

__all__ = ["DataLogger", "Inbound", "LoggerSettings", "SessionSubscriber", "run_logger"]

log = structlog.get_logger("bastion.logger")

SUBSCRIBE_FILTER: Final = "#"
SUBSCRIBE_QOS: Final = 1
LOGGER_BACKOFF: Final = Backoff(first=0.5, maximum=30.0, attempts=60)
"""Reconnect schedule: after 60 failed tries in a row (about half an hour, 30 s apart at
the end) the logger gives up; a broker restart or upgrade is ridden out."""
POLL: Final = 0.2
STORE_RETRY_MAX: Final = 10.0


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
        self._closing = False  # the writer loop has ended: nothing more is queued
        self.total = 0
        """Messages committed by this logger so far."""
        self.batches = 0
        self.dropped = 0
        """Messages received while stopping, left unacknowledged (QoS 1: redelivered)."""

    def offer(self, item: Inbound, stop: threading.Event) -> bool:
        """Queue ``item`` for the next batch, waiting while the queue is full (which holds
        the connection back: backpressure); False if ``stop`` is set or the writer loop
        ends first."""
        while not stop.is_set() and not self._closing:
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
        self._closing = True
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


class SessionSubscriber:
    """One MQTT 5 session subscribed to ``#`` at QoS 1 that survives restarts of either side.

    A ``netclient.ServiceClient`` with clean start off and a session expiry, so while the
    logger is away the broker queues QoS 1 messages for it; it reconnects on
    ``LOGGER_BACKOFF``. A refusal that retrying cannot fix (bad credentials, no permission to
    read ``#``) ends it (``failure``). Acknowledgements are manual: ``Inbound.ack`` sends the
    PUBACK, unless the connection the message came on is gone (the broker then redelivers it
    on the new one).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        deliver: Callable[[Inbound], object],
        *,
        session_expiry: int = 3600,
        backoff: Backoff | None = None,
    ) -> None:
        self._deliver = deliver
        self.client = ServiceClient(
            endpoint,
            on_message=self._on_message,
            backoff=backoff or LOGGER_BACKOFF,
            clean_start=False,
            session_expiry=session_expiry,
            manual_ack=True,
        )
        # Retain handling 1: retained messages only for a new subscription, so a resumed
        # session does not log every retained message again.
        self.client.subscribe(SUBSCRIBE_FILTER, SUBSCRIBE_QOS, retain_handling=1, required=True)

    @property
    def failure(self) -> ConnectError | None:
        """Why the subscriber gave up (None while it runs)."""
        return self.client.failure

    @property
    def healthy(self) -> bool:
        """Whether the connection thread still runs (connected or reconnecting)."""
        return self.client.failure is None and not self.client.finished

    def _on_message(self, message: Received) -> None:
        logged = LoggedMessage(
            topic=message.topic,
            payload=message.payload,
            qos=message.qos,
            retain=message.retain,
            received_at=datetime.now(UTC),
            content_type=message.content_type,
            user_properties=message.user_properties,
        )
        ack = functools.partial(self.client.ack, message) if message.qos else None
        self._deliver(Inbound(logged, ack))


def run_logger(
    endpoint: Endpoint,
    store: LogStore,
    settings: LoggerSettings,
    bounds: RunBounds,
) -> int:
    """Run the data logger until ``bounds`` ends: commit what is queued, DISCONNECT, and
    return how many messages were stored.

    Raises ``ConnectError`` if the broker cannot be reached or refuses us for good.
    """
    logger = DataLogger(store, settings)
    subscriber = SessionSubscriber(
        endpoint,
        lambda item: logger.offer(item, bounds.stop),
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
        if bounds.connect(subscriber.client):
            logger.run(bounds.stop, bounds.deadline(), healthy=lambda: subscriber.healthy)
        ended = subscriber.client.finished
    finally:
        subscriber.client.stop()
    if subscriber.failure is not None:
        raise subscriber.failure
    if ended:  # the connection thread died without a reason: never end as if all were well
        raise ConnectError(f"{endpoint.url()}: the connection ended unexpectedly (see the log)")
    log.info("logger.stopped", total=logger.total, batches=logger.batches)
    return logger.total
