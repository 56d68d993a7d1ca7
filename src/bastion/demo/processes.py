"""The demo's child processes (broker and services) and the JSON logs they write.

Each child is ``python -m bastion ...`` in a session of its own (a Ctrl-C in the terminal
reaches only the demo, which then stops the children in order), with stderr and stdout in
``logs/<name>.log``. Only processes started here are ever signalled, always by PID.
``LogTail`` reads new JSON lines from such a log as they are written.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from bastion.demo.errors import DemoError

__all__ = [
    "Child",
    "LogTail",
    "bastion_command",
    "child_env",
    "record_children",
    "stop_children",
    "stop_leftovers",
]

MAX_READ: Final = 1 << 20  # bytes read from one log per poll
MAX_LINE: Final = 64 * 1024  # a longer line is skipped, not parsed
LOG_MODE: Final = 0o600


def bastion_command(*args: str) -> list[str]:
    """``bastion ARGS`` run by this interpreter, so the demo needs nothing on ``$PATH``."""
    return [sys.executable, "-m", "bastion", *args]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment (``$BASTION_MASTER_KEY`` included, as documented) plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass(eq=False)
class Child:
    """One child process: its name, command line and log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=child_env)
    exit_code: int | None = None
    killed: bool = False  # SIGKILLed on purpose
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start it with a fresh log (0600); ``DemoError`` if it cannot be started at all."""
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
            self._log = os.fdopen(os.open(self.log_path, flags, LOG_MODE), "wb")
            self._proc = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=dict(self.env),
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise DemoError(f"cannot start {self.name}: {exc.strerror or exc}") from None

    def running(self) -> bool:
        """True while the process runs; notes the exit code once it has ended."""
        if self._proc is None:
            return False
        code = self._proc.poll()
        if code is None:
            return True
        self._ended(code)
        return False

    def kill(self) -> None:
        """SIGKILL it now (no chance to say goodbye) and reap it."""
        if self.running() and self._proc is not None:
            self.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._ended(self._proc.wait(5.0))

    def signal_stop(self) -> None:
        """Ask it to stop (SIGTERM); ``wait_stopped`` collects it."""
        if self.running() and self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGTERM)

    def wait_stopped(self, deadline: float) -> bool:
        """Wait until ``deadline`` (monotonic) for it to end; SIGKILL it after. True if clean."""
        proc = self._proc
        if proc is None:
            return True
        try:
            self._ended(proc.wait(max(0.0, deadline - time.monotonic())))
            return True
        except subprocess.TimeoutExpired:
            self.kill()
            return False

    def _ended(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def stop_children(children: Iterable[Child], timeout: float) -> list[Child]:
    """SIGTERM all of ``children`` at once, wait up to ``timeout`` s; the ones SIGKILLed."""
    group = list(children)
    for child in group:
        child.signal_stop()
    deadline = time.monotonic() + timeout
    return [child for child in group if not child.wait_stopped(deadline)]


def record_children(path: Path, children: Iterable[Child]) -> None:
    """Note the running children's PIDs in ``path``, for ``stop_leftovers`` after a crash."""
    pids = {child.name: child.pid for child in children if child.pid is not None}
    with contextlib.suppress(OSError):
        path.write_text(json.dumps(pids) + "\n")


def stop_leftovers(path: Path, token: str, timeout: float = 5.0) -> list[str]:
    """Stop children an earlier run left behind (it was SIGKILLed); the names stopped.

    Only PIDs recorded in ``path`` whose command line still names ``bastion`` and ``token``
    (the state directory) are signalled, so a reused PID is never touched.
    """
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    path.unlink(missing_ok=True)
    if not isinstance(recorded, dict):
        return []
    alive: dict[str, int] = {}
    for name, pid in recorded.items():
        if isinstance(pid, int) and _is_our_child(pid, token):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
                alive[str(name)] = pid
    signalled = sorted(alive)
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        alive = {name: pid for name, pid in alive.items() if _is_our_child(pid, token)}
        time.sleep(0.05)
    for pid in alive.values():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return signalled


def _is_our_child(pid: int, token: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = status.rpartition(")")[2].split()[:1] == ["Z"]
    return not zombie and b"bastion" in cmdline and token.encode() in cmdline


class LogTail:
    """New JSON objects of a growing log file, one call at a time (other lines are skipped)."""

    def __init__(self, path: Path, *, from_end: bool = False) -> None:
        """Read ``path`` from its start, or (``from_end``) only what is appended from now."""
        self.path = path
        self._offset = 0
        if from_end:
            with contextlib.suppress(OSError):
                self._offset = path.stat().st_size
        self._partial = b""

    def read(self) -> list[dict[str, object]]:
        """The records appended since the last call (complete lines only)."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read(MAX_READ)
        except OSError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            self._partial = b""
        records: list[dict[str, object]] = []
        for line in lines:
            if not line.startswith(b"{") or len(line) > MAX_LINE:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def text_lines(self, limit: int = 20) -> list[str]:
        """The last ``limit`` lines of the whole file, as text (for error messages)."""
        try:
            data = self.path.read_bytes()[-MAX_READ:]
        except OSError:
            return []
        return data.decode("utf-8", "replace").splitlines()[-limit:]
