"""``DataLogger``, the runner's writer loop, over a real SQLite store (no network).

Batches close on size and on the flush interval; every acknowledgement comes after the
commit that made its message durable (checked from a second connection); a failing store is
retried and nothing is acknowledged before it succeeds; stopping commits what is queued;
retention runs in the loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

from bastion.services.datalogger import DataLogger, Inbound, LoggerSettings
from bastion.storage.errors import StorageBusyError
from bastion.storage.logstore import LoggedMessage, LogQuery, LogStore, open_logstore

from .conftest import NO_ENV, readings

WAIT = 10.0


@dataclass
class AckLog:
    """Acknowledgements, each with how many messages a separate reader saw committed then."""

    reader: LogStore
    acked: list[tuple[int, int]] = field(default_factory=list)

    def ack_for(self, index: int) -> Callable[[], None]:
        return lambda: self.acked.append((index, self.reader.usage().messages))


@dataclass
class Running:
    logger: DataLogger
    stop: threading.Event
    thread: threading.Thread

    def wait_total(self, total: int) -> None:
        deadline = time.monotonic() + WAIT
        while self.logger.total < total:
            assert time.monotonic() < deadline, f"only {self.logger.total} of {total} stored"
            time.sleep(0.01)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LogStore]:
    opened = open_logstore(tmp_path / "state", create=True, environ=NO_ENV)
    yield opened
    opened.close()


@pytest.fixture
def acks(tmp_path: Path, store: LogStore) -> Iterator[AckLog]:
    reader = open_logstore(tmp_path / "state", environ=NO_ENV)
    yield AckLog(reader)
    reader.close()


def start(store: LogStore, settings: LoggerSettings) -> Running:
    logger = DataLogger(store, settings)
    stop = threading.Event()
    thread = threading.Thread(target=logger.run, args=(stop,), daemon=True)
    thread.start()
    return Running(logger, stop, thread)


def offer_all(running: Running, messages: Sequence[LoggedMessage], acks: AckLog | None) -> None:
    for index, message in enumerate(messages):
        ack = None if acks is None or message.qos == 0 else acks.ack_for(index)
        assert running.logger.offer(Inbound(message, ack), running.stop)


def test_acknowledged_only_after_commit(store: LogStore, acks: AckLog) -> None:
    running = start(store, LoggerSettings(batch_size=3, flush_interval=0.05))
    messages = readings(10)
    offer_all(running, messages, acks)
    running.wait_total(10)
    running.finish()
    assert sorted(index for index, _ in acks.acked) == list(range(10))
    for index, committed in acks.acked:
        assert committed > index, f"message {index} acknowledged before it was committed"
    assert running.logger.batches >= 4  # at most 3 per batch
    assert len(store.latest(LogQuery())) == 10


def test_a_quiet_batch_is_committed_after_the_flush_interval(store: LogStore) -> None:
    running = start(store, LoggerSettings(batch_size=1000, flush_interval=0.1))
    offer_all(running, readings(2), None)
    started = time.monotonic()
    running.wait_total(2)
    assert time.monotonic() - started < 2.0
    assert running.logger.batches == 1
    running.finish()


class FlakyStore(LogStore):
    """A real store that refuses its first ``failures`` appends as busy."""

    def __init__(self, inner: LogStore, failures: int) -> None:
        self._inner = inner
        self.failures = failures
        self.attempts = 0

    def append(self, messages: Sequence[LoggedMessage]) -> int:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise StorageBusyError("logger.db: the database is locked by another connection")
        return self._inner.append(messages)


def test_a_failing_store_is_retried_and_nothing_acknowledged_before(
    store: LogStore, acks: AckLog
) -> None:
    flaky = FlakyStore(store, failures=2)
    running = start(flaky, LoggerSettings(batch_size=10, flush_interval=0.05))
    offer_all(running, readings(4), acks)
    running.wait_total(4)
    running.finish()
    assert flaky.attempts == 3
    assert all(committed == 4 for _, committed in acks.acked)
    assert len(acks.acked) == 4


def test_stopping_commits_what_is_queued(store: LogStore, acks: AckLog) -> None:
    logger = DataLogger(store, LoggerSettings(batch_size=7, flush_interval=60))
    stop = threading.Event()
    for index, message in enumerate(readings(20)):
        assert logger.offer(Inbound(message, acks.ack_for(index)), stop)
    stop.set()
    logger.run(stop)  # returns at once, after committing the queue in batches
    assert logger.total == 20
    assert logger.batches == 3
    assert len(acks.acked) == 20
    assert not logger.offer(Inbound(readings(1)[0]), stop)  # stopping: refused, not queued
    assert logger.dropped == 1


def test_duration_ends_the_loop(store: LogStore) -> None:
    logger = DataLogger(store, LoggerSettings())
    started = time.monotonic()
    logger.run(threading.Event(), until=started + 0.3)
    assert 0.25 <= time.monotonic() - started < 3.0


def test_retention_runs_in_the_loop(store: LogStore) -> None:
    store.append(readings(5))  # from May: older than a day
    settings = LoggerSettings(retention=timedelta(days=1), retention_every=0.0)
    logger = DataLogger(store, settings)
    logger.run(threading.Event(), until=time.monotonic() + 0.3)
    assert store.usage().messages == 0


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        LoggerSettings(batch_size=0)
