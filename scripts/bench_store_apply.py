"""Throughput of ``SqliteStore.apply`` (group commit) and ``purge`` on this machine.

A steady mix like a durable QoS 1 subscriber's: per message one ``put_message`` (sealed), one
``put_outbox`` and one ``delete_outbox`` of a message acknowledged earlier, in batches of
``--batch`` ops, each batch one durable transaction. Not a test: run it by hand, e.g.
``.venv/bin/python scripts/bench_store_apply.py --messages 100000 --batch 3000``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bastion.storage.base import StoreOptions
from bastion.storage.keys import create_key_file
from bastion.storage.records import Op, StoredMessage, StoredOutboxEntry
from bastion.storage.sqlite import open_store

CLIENTS = 100
LAG = 2_000
"""Messages between a copy's queueing and its acknowledgement (the outbox backlog)."""


def batches(messages: int, batch: int, payload: int, *, props: bool = True) -> list[list[Op]]:
    """The ops of ``messages`` messages, cut into batches of about ``batch`` ops."""
    body = os.urandom(payload)
    properties = b"\x26\x00\x04unit\x00\x07celsius" if props else b""  # a user property
    ops: list[Op] = []
    for msg_id in range(1, messages + 1):
        client = f"sensor-{msg_id % CLIENTS:04d}"
        ops.append(
            (
                "put_message",
                StoredMessage(msg_id, f"plant/line-{msg_id % 7}/temp", body, 1, False, properties),
            )
        )
        ops.append(("put_outbox", StoredOutboxEntry(client, msg_id, False, 1, False)))
        if msg_id > LAG:
            old = msg_id - LAG
            ops.append(("delete_outbox", (f"sensor-{old % CLIENTS:04d}", old, False)))
    return [ops[start : start + batch] for start in range(0, len(ops), batch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=3_000, help="ops per apply()")
    parser.add_argument("--payload", type=int, default=128, help="payload bytes")
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    parser.add_argument("--no-properties", action="store_true", help="messages without any")
    parser.add_argument("--dir", type=Path, default=None, help="where (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        root = Path(work)
        provider = create_key_file(root / "master.key")
        store = open_store(root / "state", provider, options=StoreOptions(sync=args.sync))
        work_batches = batches(
            args.messages, args.batch, args.payload, props=not args.no_properties
        )
        total = sum(len(batch) for batch in work_batches)
        latencies: list[float] = []
        cpu = time.process_time()
        started = time.perf_counter()
        for batch in work_batches:
            began = time.perf_counter()
            store.apply(batch)
            latencies.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        latencies.sort()
        print(
            f"apply: {total} ops in {len(work_batches)} batches of <= {args.batch} "
            f"(sync={args.sync}, payload {args.payload} B, properties "
            f"{'no' if args.no_properties else 'yes'}): {elapsed:.2f} s, "
            f"{total / elapsed:,.0f} ops/s ({total / cpu:,.0f} per CPU-second); per batch median "
            f"{statistics.median(latencies) * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
        )

        started = time.perf_counter()
        purged = 0
        while removed := store.purge(time.time(), limit=2_000):
            purged += removed
        elapsed = time.perf_counter() - started
        print(f"purge: {purged} messages in {elapsed:.2f} s ({purged / elapsed:,.0f}/s)")

        started = time.perf_counter()
        state = store.load()
        elapsed = time.perf_counter() - started
        print(
            f"load: {len(state.outbox)} outbox entries, {len(state.messages)} messages "
            f"in {elapsed:.2f} s; stats {store.stats()}"
        )
        store.close()


if __name__ == "__main__":
    main()
