"""The group committer: batches reach the store, waiting actions run after them (with the
failure reason when a write fails), and a journal left non-empty by the restore is written."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bastion.broker.journal import WriteAheadJournal
from bastion.config.storage_settings import StorageSettings
from bastion.runtime.persistence import GroupCommitter, Persistence
from bastion.storage.errors import StorageFullError
from bastion.storage.records import Op, StoredState


class FakeStore:
    """Records what ``apply`` got; can be told to fail like a full disk."""

    def __init__(self) -> None:
        self.batches: list[list[Op]] = []
        self.full = False
        self.closed = False

    def apply(self, ops: Sequence[Op]) -> None:
        if self.full:
            raise StorageFullError("fake.db: database or disk is full")
        self.batches.append(list(ops))

    def close(self) -> None:
        self.closed = True


def _committer(store: FakeStore, journal: WriteAheadJournal) -> GroupCommitter:
    persistence = Persistence(store, journal, StoredState())  # type: ignore[arg-type]
    return GroupCommitter(persistence, StorageSettings(group_commit_interval_ms=1))


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
