"""The group committer: batches reach the store, waiting actions run after them (with the
failure reason when a write fails), a journal left non-empty by the restore is written,
checkpoints follow the commits, and a full store turns the refusal of durable work on and,
once there is room, off."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from bastion.broker.journal import WriteAheadJournal
from bastion.broker.stats import BrokerStats
from bastion.config.storage_settings import StorageSettings
from bastion.runtime import persistence
from bastion.runtime.persistence import GroupCommitter, Persistence
from bastion.storage.base import StoreHealth
from bastion.storage.errors import StorageFullError
from bastion.storage.records import Op, StoredState


class FakeStore:
    """Records what ``apply`` got; can be told to fail like a full disk."""

    path = Path("fake.db")

    def __init__(self) -> None:
        self.batches: list[list[Op]] = []
        self.full = False
        self.closed = False
        self.checkpoints = 0
        self.purges = 0
        self.used = 0  # bytes in use, as health() reports them

    def apply(self, ops: Sequence[Op]) -> None:
        if self.full:
            raise StorageFullError("fake.db: database or disk is full")
        self.batches.append(list(ops))

    def checkpoint(self) -> int:
        self.checkpoints += 1
        return 0

    def purge(self, now_wall: float, *, limit: int) -> int:
        self.purges += 1
        return 0

    def health(self) -> StoreHealth:
        return StoreHealth(self.path, 3, 4096, 8192, 4096, None, "dk-1", 0, self.used)

    def close(self) -> None:
        self.closed = True


def _committer(
    store: FakeStore, journal: WriteAheadJournal, stats: BrokerStats | None = None, mb: int = 1024
) -> GroupCommitter:
    persistence = Persistence(store, journal, StoredState())  # type: ignore[arg-type]
    settings = StorageSettings(group_commit_interval_ms=1, max_db_size_mb=mb)
    return GroupCommitter(persistence, settings, stats)


async def _run_until(committer: GroupCommitter, done: asyncio.Event) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(committer.run(stop))
    await asyncio.wait_for(done.wait(), timeout=5.0)
    stop.set()
    await asyncio.wait_for(task, timeout=5.0)


async def test_ops_left_by_the_restore_are_committed_without_new_traffic() -> None:
    journal = WriteAheadJournal()
    journal.session_gone("restored-then-expired")  # journaled before the committer exists
    store = FakeStore()
    committer = _committer(store, journal)
    done = asyncio.Event()
    journal.after_commit(lambda failure: done.set())
    await _run_until(committer, done)
    assert store.batches == [[("delete_session", "restored-then-expired")]]


async def test_actions_run_after_their_batch_and_learn_a_failure() -> None:
    journal = WriteAheadJournal()
    store = FakeStore()
    committer = _committer(store, journal)
    outcomes: list[int] = []
    done = asyncio.Event()

    def record(failure: int) -> None:
        outcomes.append(failure)
        if len(outcomes) == 2:
            done.set()

    stop = asyncio.Event()
    task = asyncio.create_task(committer.run(stop))
    journal.session("a", 60, None, None)
    journal.after_commit(record)
    await asyncio.sleep(0.05)
    store.full = True
    journal.session("b", 60, None, None)
    journal.after_commit(record)
    await asyncio.wait_for(done.wait(), timeout=5.0)
    stop.set()
    await asyncio.wait_for(task, timeout=5.0)
    assert outcomes == [0, 0x97]
    assert len(store.batches) == 1 and committer.write_failures == 1


async def _commit_one(committer: GroupCommitter, journal: WriteAheadJournal, client: str) -> int:
    """Journal one change, let the committer write it; the action's outcome."""
    outcome: list[int] = []
    journal.session(client, 60, None, None)
    journal.after_commit(outcome.append)
    await committer.commit()
    return outcome[0]


async def test_a_checkpoint_follows_the_commits_once_a_second_even_when_quiet() -> None:
    journal = WriteAheadJournal()
    store = FakeStore()
    stats = BrokerStats()
    committer = _committer(store, journal, stats)
    stop = asyncio.Event()
    task = asyncio.create_task(committer.run(stop))
    journal.session("a", 60, None, None)
    for _ in range(40):  # bounded: the idle checkpoint is due about 1 s after the commit
        await asyncio.sleep(0.05)
        if store.checkpoints:
            break
    stop.set()
    await asyncio.wait_for(task, timeout=5.0)
    assert store.batches and store.checkpoints == 1
    assert stats.store_bytes == 4096 + 8192  # database + WAL, measured after the checkpoint


async def test_a_store_near_its_size_limit_refuses_durable_work_until_there_is_room(
    capsys: pytest.CaptureFixture[str],
) -> None:
    journal = WriteAheadJournal()
    store = FakeStore()
    stats = BrokerStats()
    committer = _committer(store, journal, stats, mb=1)
    store.used = 950_000  # over 90 % of 1 MiB
    assert await _commit_one(committer, journal, "a") == 0
    await committer._checkpoint()
    assert journal.full
    assert store.purges == 0  # the purge runs at the checkpoints while full
    await committer._checkpoint()
    assert store.purges == 1
    store.used = 500_000  # acknowledgements and the purge made room
    await committer._checkpoint()
    assert not journal.full
    out = capsys.readouterr().out
    assert out.count("storage.full") == 1 and out.count("storage.room_again") == 1


async def test_a_full_disk_sets_the_flag_until_the_disk_has_room_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal = WriteAheadJournal()
    store = FakeStore()
    stats = BrokerStats()
    committer = _committer(store, journal, stats)
    store.full = True
    assert await _commit_one(committer, journal, "a") == 0x97
    assert journal.full and stats.store_write_failures == 1
    store.full = False
    free = 1024 * 1024
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: shutil._ntuple_diskusage(9, 9, free))
    await committer._checkpoint()
    assert journal.full  # 1 MiB free: not enough to go on
    free = persistence.DISK_ROOM
    await committer._checkpoint()
    assert not journal.full
