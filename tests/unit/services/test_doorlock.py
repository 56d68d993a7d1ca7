"""Door-lock decisions: QoS 2 only, allowed users only, and never the same command twice."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.services.doorlock import (
    CommandError,
    DoorLock,
    LockCommand,
    Outcome,
    Refusal,
    command_topic,
    parse_command,
    result_topic,
)

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def cmd(command: object = "unlock", request_id: object = "r-1", user: object = "alice") -> bytes:
    return json.dumps({"command": command, "request_id": request_id, "user": user}).encode()


def lock() -> DoorLock:
    return DoorLock({"alice", "bob"})


def test_topics() -> None:
    assert command_topic("lock1") == "cmd/lock1"
    assert result_topic("lock1") == "result/lock1"


def test_parse_command() -> None:
    assert parse_command(cmd()) == LockCommand("unlock", "r-1", "alice")
    with pytest.raises(CommandError) as info:
        parse_command(cmd(command="open"))
    assert info.value.refusal is Refusal.UNKNOWN_COMMAND


def test_authorised_unlock_at_qos2_is_executed_and_reported() -> None:
    door = lock()
    assert door.state == "locked"
    decision = door.handle(cmd(), 2, NOW)
    assert decision.execute
    assert door.state == "unlocked"
    assert json.loads(decision.result.to_json()) == {
        "device": "lock1",
        "ts": "2026-11-26T10:00:00.000Z",
        "outcome": "accepted",
        "state": "unlocked",
        "request_id": "r-1",
        "command": "unlock",
    }
    relock = door.handle(cmd("lock", "r-2", "bob"), 2, NOW)
    assert relock.execute
    assert door.state == "locked"


@pytest.mark.parametrize("qos", [0, 1, 3, -1])
def test_commands_below_qos2_are_refused(qos: int) -> None:
    door = lock()
    decision = door.handle(cmd(), qos, NOW)
    assert not decision.execute
    assert door.state == "locked"
    assert decision.result.outcome is Outcome.REFUSED
    assert decision.result.reason is not None
    assert decision.result.reason.startswith("qos_too_low")
    assert decision.result.request_id == "r-1"


def test_unknown_user_is_refused() -> None:
    door = lock()
    decision = door.handle(cmd(user="mallory"), 2, NOW)
    assert not decision.execute
    assert decision.result.reason == "user_not_allowed"
    assert door.state == "locked"


def test_duplicate_request_id_is_answered_but_not_executed_again() -> None:
    door = lock()
    assert door.handle(cmd(), 2, NOW).execute
    assert door.handle(cmd("lock", "r-2"), 2, NOW).execute
    replay = door.handle(cmd(), 2, NOW)
    assert not replay.execute
    assert replay.result.outcome is Outcome.DUPLICATE
    assert door.state == "locked"  # the replayed unlock did not unlock


def test_request_id_reused_for_another_command_is_refused() -> None:
    door = lock()
    door.handle(cmd(), 2, NOW)
    decision = door.handle(cmd("lock"), 2, NOW)
    assert not decision.execute
    assert decision.result.reason == "request_id_reused"
    assert door.state == "unlocked"


def test_a_refused_request_can_be_retried_correctly() -> None:
    door = lock()
    assert not door.handle(cmd(), 1, NOW).execute
    assert door.handle(cmd(), 2, NOW).execute


def test_history_is_bounded() -> None:
    door = DoorLock({"alice"}, history=2)
    for n in range(3):
        assert door.handle(cmd(request_id=f"r-{n}"), 2, NOW).execute
    assert door.handle(cmd(request_id="r-2"), 2, NOW).result.outcome is Outcome.DUPLICATE
    with pytest.raises(ValueError):
        DoorLock({"alice"}, history=0)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"open sesame", "malformed: not JSON"),
        (cmd(command="open"), "unknown_command"),
        (cmd(command=None), "unknown_command"),
        (cmd(request_id=""), "malformed: bad request_id"),
        (cmd(request_id=5), "malformed: wrong type for 'request_id'"),
        (cmd(user="a b"), "malformed: bad user"),
        (b"{}", "malformed: missing field 'request_id'"),
        (b"{" + b" " * 600 + b"}", "malformed: payload too large"),
    ],
)
def test_malformed_commands_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    decision = lock().handle(payload, 2, NOW)
    assert not decision.execute
    assert decision.result.reason is not None
    assert decision.result.reason.startswith(reason)
    json.loads(decision.result.to_json())


def test_a_refused_payload_keeps_its_request_id_when_readable() -> None:
    decision = lock().handle(cmd(command="open", request_id="r-9"), 2, NOW)
    assert decision.result.request_id == "r-9"


@given(st.binary(max_size=600), st.integers(min_value=-2, max_value=4))
def test_handle_never_raises_and_never_executes_garbage(payload: bytes, qos: int) -> None:
    decision = lock().handle(payload, qos, NOW)
    json.loads(decision.result.to_json())
    if decision.execute:
        assert qos == 2
        assert parse_command(payload).user in {"alice", "bob"}
