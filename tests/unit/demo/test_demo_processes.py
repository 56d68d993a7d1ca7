"""Child processes and their logs (``demo/processes.py``): real tiny Python children, by PID."""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
from pathlib import Path

from bastion.demo.processes import (
    Child,
    LogTail,
    bastion_command,
    record_children,
    stop_children,
    stop_leftovers,
)

SLEEPER = "import time; print('up', flush=True); time.sleep(60)"
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('up', flush=True); time.sleep(60)"
)


def child(tmp_path: Path, name: str, code: str) -> Child:
    return Child(name, [sys.executable, "-c", code], tmp_path / f"{name}.log")


def wait_for_output(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes():
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} stayed empty")


def test_sigterm_stops_children_and_logs_are_private(tmp_path: Path) -> None:
    first, second = child(tmp_path, "a", SLEEPER), child(tmp_path, "b", SLEEPER)
    for one in (first, second):
        one.start()
        wait_for_output(one.log_path)
        assert one.running()
        assert stat.S_IMODE(one.log_path.stat().st_mode) == 0o600
    assert stop_children([first, second], timeout=10.0) == []
    assert first.exit_code == second.exit_code == -signal.SIGTERM
    assert first.log_path.read_text() == "up\n"


def test_a_child_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    stubborn = child(tmp_path, "stubborn", STUBBORN)
    stubborn.start()
    wait_for_output(stubborn.log_path)
    started = time.monotonic()
    assert stop_children([stubborn], timeout=0.5) == [stubborn]
    assert time.monotonic() - started < 8.0
    assert stubborn.exit_code == -signal.SIGKILL
    assert not stubborn.running()


def test_kill_is_sigkill_on_purpose(tmp_path: Path) -> None:
    victim = child(tmp_path, "victim", SLEEPER)
    victim.start()
    wait_for_output(victim.log_path)
    pid = victim.pid
    victim.kill()
    assert victim.killed
    assert victim.exit_code == -signal.SIGKILL
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError(f"pid {pid} still exists")


def test_a_child_that_exits_by_itself_is_noticed(tmp_path: Path) -> None:
    quick = child(tmp_path, "quick", "import sys; sys.exit(3)")
    quick.start()
    deadline = time.monotonic() + 20.0
    while quick.running() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert quick.exit_code == 3
    assert stop_children([quick], timeout=1.0) == []


def test_the_bastion_command_uses_this_interpreter() -> None:
    assert bastion_command("serve", "-c", "x") == [
        sys.executable,
        "-m",
        "bastion",
        "serve",
        "-c",
        "x",
    ]


def test_log_tail_reads_complete_json_lines_once(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text('{"event": "a"}\nnot json\n{"event": ')
    tail = LogTail(log)
    assert tail.read() == [{"event": "a"}]
    with log.open("a") as handle:
        handle.write('"b", "n": 2}\n[1, 2]\n')
    assert tail.read() == [{"event": "b", "n": 2}]
    assert tail.read() == []
    assert tail.text_lines(2) == ['{"event": "b", "n": 2}', "[1, 2]"]


def test_log_tail_from_end_skips_what_was_there(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text('{"kind": "old"}\n')
    tail = LogTail(log, from_end=True)
    with log.open("a") as handle:
        handle.write('{"kind": "new"}\n')
    assert tail.read() == [{"kind": "new"}]


def test_log_tail_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    tail = LogTail(tmp_path / "nope.log", from_end=True)
    assert tail.read() == []
    assert tail.text_lines() == []


def test_leftovers_of_a_killed_run_are_stopped_and_only_they(tmp_path: Path) -> None:
    token = str(tmp_path / "state")
    ours = Child("sensor1", [sys.executable, "-c", SLEEPER, "bastion", token], tmp_path / "a.log")
    other = Child(
        "other", [sys.executable, "-c", SLEEPER, "bastion", "/elsewhere"], tmp_path / "b.log"
    )
    pids = tmp_path / "pids.json"
    try:
        for one in (ours, other):
            one.start()
            wait_for_output(one.log_path)
        record_children(pids, [ours, other])
        assert stop_leftovers(pids, token) == ["sensor1"]
        deadline = time.monotonic() + 10.0
        while ours.running() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ours.exit_code == -signal.SIGTERM
        assert other.running()  # its command line does not name this state directory
        assert not pids.exists()
        assert stop_leftovers(pids, token) == []
    finally:
        stop_children([ours, other], timeout=5.0)
