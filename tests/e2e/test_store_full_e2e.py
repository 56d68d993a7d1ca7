"""E2E: a store at its size limit refuses new durable work, QoS 0 keeps flowing, and service
comes back by itself once the queued messages are delivered and purged.

A real ``bastion serve`` with ``[storage] max_db_size_mb = 1``: an offline durable subscriber
collects incompressible QoS 1 messages until the broker answers PUBACK 0x97 (quota exceeded)
and logs ``storage.full``; meanwhile QoS 0 between online clients still arrives and
``$SYS/broker/store/messages/refused`` counts the refusals. The subscriber then comes back and
takes its messages; the checkpoint and purge make room, the broker logs
``storage.room_again`` and accepts durable messages again, without a restart.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from .conftest import ClientPool, Processes, ServeProcess

pytestmark = pytest.mark.timeout(120)

PAYLOAD_BYTES = 48 * 1024  # incompressible: about 20 of these fill 1 MiB
MAX_FILL = 60  # bounded: the limit is reached well before this many
QUOTA_EXCEEDED = 0x97
SESSION = {"SessionExpiryInterval": 3600}


def wait_for_event(broker: ServeProcess, name: str, timeout: float) -> None:
    """Poll the broker's log until a record named ``name`` is in it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if broker.find_events(name):
            return
        time.sleep(0.1)
    raise AssertionError(f"no {name} log record within {timeout}s")


def test_a_full_store_refuses_durable_work_keeps_qos0_and_recovers(
    procs: Processes, clients: ClientPool, tmp_path: Path
) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text(
        "[mqtt]\nsys_interval = 1\n\n[storage]\nmax_db_size_mb = 1\npurge_interval_s = 1\n"
    )
    broker = procs.serve(
        "full", ["-c", str(config), "--data-dir", str(tmp_path / "data")], start=True
    )
    keeper = clients.paho(broker.port, "keeper", clean=False, properties=SESSION)
    assert keeper.subscribe("fill/#", 1) == [1]
    keeper.disconnect()  # offline: every fill message is queued for it, on disk

    reader = clients.paho(broker.port, "reader")
    assert reader.subscribe("live/#", 0) == [0]
    assert reader.subscribe("$SYS/broker/store/messages/refused", 0) == [0]
    publisher = clients.paho(broker.port, "filler")

    accepted = 0
    code = 0
    for number in range(MAX_FILL):
        code = publisher.publish(f"fill/{number}", os.urandom(PAYLOAD_BYTES), 1)
        if code == QUOTA_EXCEEDED:
            break
        assert code == 0, f"fill/{number}: unexpected reason code {code:#x}"
        accepted += 1
    assert code == QUOTA_EXCEEDED, f"no 0x97 after {MAX_FILL} messages of {PAYLOAD_BYTES} B"
    assert accepted >= 5, "refused far below the limit"
    wait_for_event(broker, "storage.full", 5.0)

    # QoS 0 between online clients does not touch the store: it keeps flowing.
    assert publisher.publish("live/temp", b"21.5", 0) == 0
    live: list[bytes] = []
    refused = 0
    deadline = time.monotonic() + 5.0
    while (refused < 1 or not live) and time.monotonic() < deadline:  # $SYS every second
        for message in reader.collect(0.5):
            if message.topic.startswith("$SYS/"):
                refused = int(message.payload)
            else:
                live.append(message.payload)
    assert live == [b"21.5"]
    assert refused >= 1, "$SYS/broker/store/messages/refused never counted the refusal"

    # The durable subscriber comes back and takes everything that was accepted.
    keeper = clients.paho(broker.port, "keeper", clean=False, properties=SESSION)
    assert keeper.connack.session_present
    got = keeper.expect_n(accepted, timeout=30.0)
    assert sorted(int(m.topic.split("/")[1]) for m in got) == list(range(accepted))
    # The message whose commit failed was already queued in memory when the write failed:
    # its publisher heard 0x97, and this subscriber may still get it (at least once).
    extra = {m.topic for m in keeper.collect(1.0)}
    assert extra <= {f"fill/{accepted}"}, extra

    # Room again: new durable work is accepted without a restart.
    deadline = time.monotonic() + 30.0
    while True:
        code = publisher.publish("fill/again", os.urandom(1024), 1)
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == 0, f"still refused ({code:#x}) after the queue was delivered"
    assert keeper.expect().topic == "fill/again"
    wait_for_event(broker, "storage.room_again", 5.0)
    assert broker.running(), broker.log_tail()
    assert publisher.is_connected() and reader.is_connected()
    assert broker.stop() == 0, broker.log_tail()
