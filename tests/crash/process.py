"""One broker that is killed with SIGKILL and restarted on the same port and data directory.

Every start is an *incarnation* with a log file of its own; the number of the current one is
shared with the clients, so each CONNACK they see is tagged with the broker run that sent it.
Only the process this object started is ever signalled, by its PID.

``BASTION_TEST_BROKER=mosquitto`` runs Debian's mosquitto instead (no persistence): it is the
reference the harness itself is validated against in the control run; mosquitto's own
persistence is periodic, so the kill runs are Bastion-only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Final

from support.brokerproc import (
    HOST,
    USING_MOSQUITTO,
    bastion_cli,
    free_port,
    port_accepts,
)

START_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 10.0
REAP_TIMEOUT: Final = 5.0
START_ATTEMPTS: Final = 3  # only the first start may move to another port (a lost port race)


class BrokerStartError(Exception):
    """The broker exited, or did not accept connections in time."""


class Incarnation:
    """The number of the broker run that is current (1 for the first start), thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    @property
    def value(self) -> int:
        with self._lock:
            return self._value

    def advance(self) -> int:
        with self._lock:
            self._value += 1
            return self._value


class CrashBroker:
    """The broker under test, restartable after ``kill9`` on the same port and data dir."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.kind = "mosquitto" if USING_MOSQUITTO else "bastion"
        self.port = 0
        self.incarnation = Incarnation()
        self.logs: list[Path] = []
        self.exit_codes: list[int] = []  # one per finished incarnation (-9 after a kill)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ lifecycle

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the next incarnation and wait until it accepts TCP connections.

        The first start picks a free port (and another one if it lost a race for it); every
        restart reuses that port, as a real deployment's clients expect.
        """
        assert not self.running(), "the previous incarnation is still running"
        if self.port:
            self._launch(self.port)
            return
        for attempt in range(START_ATTEMPTS):
            port = free_port()
            try:
                self._launch(port)
            except BrokerStartError as exc:
                if attempt + 1 < START_ATTEMPTS and "address already in use" in str(exc).lower():
                    continue
                raise
            self.port = port
            return

    def _launch(self, port: int) -> None:
        number = self.incarnation.advance()
        log_path = self.workdir / f"{self.kind}-{number}.log"
        self.logs.append(log_path)
        self._log_file = log_path.open("wb")
        self._proc = subprocess.Popen(
            self._command(port),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,  # our signals only: a terminal's Ctrl-C must not reach it
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._reaped(self._proc.returncode)
                raise BrokerStartError(
                    f"{self.kind} incarnation {number} exited with {self.exit_codes[-1]} before "
                    f"accepting connections on port {port}\n{self.log_tail(-1)}"
                )
            if port_accepts(port):
                return
            time.sleep(0.02)
        self.kill9()
        raise BrokerStartError(
            f"{self.kind} incarnation {number} did not accept connections on {HOST}:{port} "
            f"within {START_TIMEOUT}s\n{self.log_tail(-1)}"
        )

    def _command(self, port: int) -> list[str]:
        if USING_MOSQUITTO:
            exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            conf = self.workdir / "mosquitto.conf"
            lines = [
                f"listener {port} {HOST}",
                "allow_anonymous true",
                "persistence false",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                "log_type notice",
            ]
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                lines.append("user root")
            conf.write_text("\n".join(lines) + "\n")
            return [exe, "-c", str(conf)]
        return [
            *bastion_cli(),
            "serve",
            "--listen",
            f"{HOST}:{port}",
            "--allow-anonymous",
            "--data-dir",
            str(self.data_dir),
            "--log-format",
            "json",
        ]

    def kill9(self) -> None:
        """SIGKILL our own broker process (by PID) and reap it."""
        proc = self._proc
        assert proc is not None, "no broker was started"
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        try:
            code = proc.wait(REAP_TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            raise AssertionError(f"pid {proc.pid} survived SIGKILL for {REAP_TIMEOUT}s") from None
        self._reaped(code)

    def stop(self) -> int | None:
        """SIGTERM the current incarnation, wait (bounded), SIGKILL it if it hangs.

        Returns its exit code, or None when nothing was running.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                code = proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill9()
                return -int(signal.SIGKILL)
        else:
            code = proc.returncode
        self._reaped(code)
        return code

    def _reaped(self, code: int) -> None:
        self.exit_codes.append(code)
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # ------------------------------------------------------------------ logs

    def log_text(self, index: int) -> str:
        try:
            return self.logs[index].read_bytes().decode("utf-8", "replace")
        except (OSError, IndexError) as exc:
            return f"<broker log unavailable: {exc}>"

    def log_tail(self, index: int, lines: int = 40) -> str:
        text = self.log_text(index).splitlines()
        head = f"--- {self.kind} log {index if index >= 0 else len(self.logs) + index + 1} ---"
        return "\n".join([head, *text[-lines:]])

    def log_digest(self, tail_lines: int = 30, max_notable: int = 60) -> str:
        """What a failure report needs from the logs of every incarnation: how each one
        started and what it restored, its warnings and errors, and the tail of the last one."""
        notable: list[str] = []
        for number in range(1, len(self.logs) + 1):
            for line in self.log_text(number - 1).splitlines():
                if _is_notable(line):
                    notable.append(f"[{number}] {line}")
        shown = notable[:max_notable]
        if len(notable) > max_notable:
            shown.append(f"... {len(notable) - max_notable} more notable lines in {self.workdir}")
        parts = [
            f"--- {self.kind}: {len(self.logs)} incarnation(s), exit codes {self.exit_codes}, "
            f"logs in {self.workdir} ---",
            *shown,
        ]
        if self.logs:
            parts.append(self.log_tail(-1, tail_lines))
        return "\n".join(parts)


_NOTABLE_EVENTS: Final = frozenset(
    {"storage.restored", "broker.started", "broker.stopped", "listener.started"}
)


def _is_notable(line: str) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        lowered = line.lower()  # mosquitto, or a traceback on stderr
        return "error" in lowered or "warning" in lowered or "traceback" in lowered
    if not isinstance(record, dict):
        return False
    level = str(record.get("level", "")).lower()
    event = str(record.get("event", ""))
    if event in ("security.anonymous_allowed", "security.acl_open", "storage.master_key_created"):
        return False  # expected in this development setup
    return level in ("warning", "error", "critical") or event in _NOTABLE_EVENTS
