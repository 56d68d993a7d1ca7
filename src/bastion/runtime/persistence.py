"""Persistence at run time: open the store, restore the broker, group-commit its journal.

``open_persistence`` opens the encrypted store of ``[storage]`` (or nothing when persistence
is off) and loads the durable state; ``GroupCommitter`` then writes the broker's journal in
batches on one storage thread — at most every ``group_commit_interval_ms`` or as soon as
``group_commit_max_batch`` ops wait — and runs the acknowledgements that waited for each
batch. A batch is durable once appended to the store's journal; about once a second (or
after ``CHECKPOINT_OPS`` ops) a checkpoint folds the journal into the tables, where most of a
busy second's copies have cancelled out. Purging, key refresh and background re-encryption
run on the same thread.

A full store (the database at ``FULL_AT`` of ``storage.max_db_size_mb``, or a commit that
failed for lack of space) sets ``journal.full``: the core then refuses new durable work up
front (0x97) while acknowledgements, which free space, still commit; the purge runs at every
checkpoint; below ``ROOM_AT`` (after a full disk: once ``DISK_ROOM`` bytes are free; it
looks every second) the flag clears by itself. Both transitions are logged once and counted
in ``$SYS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from bastion.broker.core import Broker
from bastion.broker.journal import DURABLE, WriteAheadJournal
from bastion.broker.restore import RestoreReport, restore
from bastion.broker.stats import BrokerStats
from bastion.config.storage_settings import StorageSettings
from bastion.storage.base import Store, StoreHealth
from bastion.storage.errors import QUOTA_EXCEEDED, StorageError
from bastion.storage.records import StoredState
from bastion.storage.sqlite import open_store_from_settings

log = structlog.get_logger("bastion.storage")

MAINTENANCE_INTERVAL = 5.0  # seconds between key refreshes / re-encryption steps
CHECKPOINT_INTERVAL = 1.0  # seconds between checkpoints while commits come
CHECKPOINT_OPS = 200_000  # or sooner, once this many ops wait (bounds the fold's memory)
SWITCH_INTERVAL = 0.0005
"""The interpreter's thread switch interval while the storage thread runs (Python's default
is 5 ms). Every commit hands the GIL to the storage thread a few times (around SQLite calls
and the fsync) while the event loop is busy, and each hand-over may wait a whole interval;
the publishers' acknowledgements wait for those commits. Measured on the durable QoS 1
benchmark (3 runs each, medians): 5 ms 12.7k msgs/s, 2 ms 11.3k, 1 ms 14.8k, 0.5 ms 16.5k,
0.2 ms 13.1k."""
FULL_AT = 0.9  # of max_db_size: refuse new durable work from here (the rest serves acks)
ROOM_AT = 0.8  # ... until the data in use is back under this
DISK_ROOM = 64 * 1024 * 1024  # after a commit failed for a full disk: free bytes to go on
PURGE_BATCH = 1000
REKEY_BATCH = 200
REKEY_STEPS = 250  # at most 50,000 records per maintenance round


@dataclass(slots=True)
class Persistence:
    """An open store, the journal the broker writes to, and what was loaded."""

    store: Store
    journal: WriteAheadJournal
    loaded: StoredState


def open_persistence(settings: StorageSettings) -> Persistence | None:
    """Open and load the store (None when ``[storage] enabled = false``).

    ``StorageError`` (a corrupt or foreign database, a missing or wrong key) propagates:
    the broker must not start on state it cannot trust.
    """
    if not settings.enabled:
        log.warning(
            "storage.disabled",
            detail="persistence is off: sessions, queued and retained messages are lost on restart",
        )
        return None
    store = open_store_from_settings(settings)
    try:
        loaded = store.load()
    except BaseException:
        store.close()
        raise
    journal = WriteAheadJournal(time.time() - time.monotonic())
    return Persistence(store, journal, loaded)


def restore_broker(persistence: Persistence, broker: Broker) -> RestoreReport:
    report = restore(broker, persistence.loaded, time.monotonic())
    persistence.loaded = StoredState()  # free the loaded copy
    log.info(
        "storage.restored",
        path=str(persistence.store.path),
        sessions=report.sessions,
        expired_sessions=report.expired_sessions,
        subscriptions=report.subscriptions,
        queued=report.queued,
        inflight=report.inflight,
        retained=report.retained,
        wills=report.wills,
        skipped=report.skipped,
    )
    return report


class GroupCommitter:
    """Writes the journal in batches off the event loop; runs what waited for each batch."""

    def __init__(
        self,
        persistence: Persistence,
        settings: StorageSettings,
        stats: BrokerStats | None = None,
    ) -> None:
        self._store = persistence.store
        self._stats = stats if stats is not None else BrokerStats()
        self._journal = persistence.journal
        self._interval = settings.group_commit_interval_ms / 1000.0
        self._max_batch = settings.group_commit_max_batch
        self._purge_interval = settings.purge_interval_s
        self._thread = ThreadPoolExecutor(1, "bastion-storage")
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._wake = asyncio.Event()
        self._failing = False
        self.commits = 0
        self.write_failures = 0
        self.ops_written = 0
        self.checkpoints = 0
        self._uncheckpointed = 0  # ops appended since the last checkpoint
        self._limit = settings.max_db_size_mb * 1024 * 1024 if settings.enabled else 0
        self._full = False
        self._disk_full = False  # the last failure was the disk's, not the size limit's
        self._next_checkpoint = time.monotonic() + CHECKPOINT_INTERVAL
        self._journal.wake = self._wake.set
        if self._journal.pending():  # restore journaled (sessions connected at a crash)
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Commit until ``stop`` is set, then commit what is left."""
        loop = asyncio.get_running_loop()
        maintenance = loop.create_task(self._maintain(stop))
        try:
            while not stop.is_set():
                waiter = loop.create_task(self._wake.wait())
                stopper = loop.create_task(stop.wait())
                idle = None  # with ops not yet checkpointed (or a full store to look at
                if self._uncheckpointed or self._full:  # again), wait at most until then
                    idle = max(0.0, self._next_checkpoint - time.monotonic())
                done, _ = await asyncio.wait(
                    {waiter, stopper}, timeout=idle, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                stopper.cancel()
                if not done:  # quiet: fold what the last commits left into the tables
                    await self._checkpoint()
                    continue
                self._wake.clear()
                if len(self._journal.ops) < self._max_batch:
                    await asyncio.sleep(self._interval)  # let a batch gather
                await self.commit()
        finally:
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance

    async def commit(self) -> None:
        """Write what the journal holds now and run the actions that waited for it."""
        journal = self._journal
        while journal.pending():
            ops, actions = journal.take()
            failure = DURABLE
            if ops:
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        self._thread, self._store.apply, ops
                    )
                except StorageError as exc:
                    failure = exc.reason
                    self.write_failures += 1
                    self._stats.store_write_failures += 1
                    if not self._failing:
                        log.error("storage.write_failed", error=str(exc), ops=len(ops))
                    self._failing = True
                    if failure == QUOTA_EXCEEDED:
                        self._disk_full = True  # (a size limit is caught before it fails)
                        self._set_full(True, str(exc))
                else:
                    if self._failing:
                        log.info("storage.write_recovered")
                    self._failing = False
                    self.commits += 1
                    self.ops_written += len(ops)
            for action in actions:
                try:
                    action(failure)
                except Exception:  # one client's action must not stop the others
                    log.exception("storage.action_failed")
            if failure == DURABLE:
                self._uncheckpointed += len(ops)
            if self._uncheckpointed and (
                self._uncheckpointed >= CHECKPOINT_OPS or time.monotonic() >= self._next_checkpoint
            ):
                await self._checkpoint()

    async def _checkpoint(self) -> None:
        """Fold the journal into the tables (after the acks: they waited only for the append),
        then look at the store's size (and purge at once while it is full)."""
        self._next_checkpoint = time.monotonic() + CHECKPOINT_INTERVAL
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self._store.checkpoint)
        except StorageError as exc:  # the journal keeps everything; the next one retries
            log.warning("storage.checkpoint_failed", error=str(exc))
        else:
            self._uncheckpointed = 0
            self.checkpoints += 1
        try:
            if self._full:
                await loop.run_in_executor(self._thread, self._purge, time.time())
            health = await loop.run_in_executor(self._thread, self._store.health)
        except StorageError as exc:
            log.warning("storage.maintenance_failed", error=str(exc))
        else:
            self._measure(health)

    def _measure(self, health: StoreHealth) -> None:
        """Update the size gauge and the full flag: full at ``FULL_AT`` of the size limit,
        room again under ``ROOM_AT``; after a full disk, once ``DISK_ROOM`` bytes are free."""
        self._stats.store_bytes = health.database_bytes + health.wal_bytes
        used = health.used_bytes
        if self._limit and used >= FULL_AT * self._limit:
            self._set_full(True, f"{used} of {self._limit} bytes in use")
            return
        if not self._full:
            return
        if self._disk_full:
            try:
                free = shutil.disk_usage(health.path.parent).free
            except OSError:
                return
            if free >= DISK_ROOM:
                self._disk_full = False
                self._set_full(False, f"{free} bytes free on the disk")
        elif not self._limit or used < ROOM_AT * self._limit:
            self._set_full(False, f"{used} of {self._limit} bytes in use")

    def _set_full(self, full: bool, detail: str) -> None:
        """Turn the refusal of new durable work on or off (logged once per change)."""
        if full == self._full:
            return
        self._full = full
        self._journal.full = full
        if full:
            log.error(
                "storage.full",
                detail=detail,
                effect="QoS 1/2 messages for durable sessions and retained messages are "
                "refused (0x97) until there is room; QoS 0 and acknowledgements go on",
                path=str(self._store.path),
            )
        else:
            log.info("storage.room_again", detail=detail)

    async def _maintain(self, stop: asyncio.Event) -> None:
        """Purge, pick up rotated keys and re-encrypt old records, a little at a time."""
        loop = asyncio.get_running_loop()
        next_purge = time.monotonic() + self._purge_interval
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=MAINTENANCE_INTERVAL)
            if stop.is_set():
                return
            try:
                await loop.run_in_executor(self._thread, self._store.refresh_keys)
                for _ in range(REKEY_STEPS):  # re-encrypt under the current key, in slices
                    done = await loop.run_in_executor(
                        self._thread, self._store.rekey_step, REKEY_BATCH
                    )
                    if done < REKEY_BATCH or stop.is_set():
                        break
                    await asyncio.sleep(0.005)  # commits and `bastion keys` get their turn
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + self._purge_interval
                    await loop.run_in_executor(self._thread, self._purge, time.time())
            except StorageError as exc:
                log.warning("storage.maintenance_failed", error=str(exc))

    def _purge(self, now_wall: float) -> None:
        while self._store.purge(now_wall, limit=PURGE_BATCH) >= PURGE_BATCH:
            time.sleep(0.001)  # leave room for commits and `bastion keys` between batches

    def close(self) -> None:
        """After the final ``commit``: close the store and its thread."""
        self._thread.submit(self._store.close).result()
        self._thread.shutdown(wait=True)
        sys.setswitchinterval(self._switch_interval)
