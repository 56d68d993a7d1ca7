"""A broker process that is stopped or killed and started again on the same port.

``RestartableProcess`` holds the mechanics the crash suite (``CrashBroker``) and the e2e
persistence suite (``ServeProcess``) share; a subclass says only what to run
(``command(port)``) and, where it differs, how a run is named, its environment and its
working directory. Each start is a *run*, numbered from 1, with a log file of its own (stdout
and stderr together). The first start picks a free port (another one if it lost a race for
it); every later start reuses it, as a real deployment's clients expect.

Only the process this object started is ever signalled, by its PID; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Final

from .brokerproc import HOST, free_port, port_accepts

START_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 10.0
REAP_TIMEOUT: Final = 5.0
START_ATTEMPTS: Final = 3  # only the first start may move to another port (a lost port race)


class BrokerStartError(Exception):
    """The broker exited, or did not accept connections in time."""


class RestartableProcess:
    """One command line started again and again on the same port; see the module docstring."""

    RUN_NOUN: str = "run"  # what a start is called in messages ("incarnation" in the crash suite)

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.name = name
        self.port = 0
        self.logs: list[Path] = []
        self.exit_codes: list[int] = []  # one per finished run (-9 after a kill)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ hooks

    def command(self, port: int) -> list[str]:
        """The command line of a run listening on ``HOST:port``."""
        raise NotImplementedError

    def log_name(self, run: int) -> str:
        """The file name (in ``workdir``) of the log of run number ``run``."""
        return f"{self.name}-run{run}.log"

    def launch_env(self) -> dict[str, str]:
        """The environment of a run: ours, unbuffered."""
        return dict(os.environ, PYTHONUNBUFFERED="1")

    def launch_cwd(self) -> Path | None:
        """The working directory of a run (None: ours)."""
        return None

    def before_launch(self, run: int) -> None:
        """Called just before run number ``run`` is started."""

    # ------------------------------------------------------------------ lifecycle

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the next run and wait until it accepts TCP connections (at most START_TIMEOUT)."""
        assert not self.running(), f"{self.name}: the previous {self.RUN_NOUN} is still running"
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
        run = len(self.logs) + 1
        self.before_launch(run)
        log_path = self.workdir / self.log_name(run)
        self.logs.append(log_path)
        self._log_file = log_path.open("wb")
        cmd = self.command(port)
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self.launch_env(),
            cwd=self.launch_cwd(),
            start_new_session=True,  # our signals only: a terminal's Ctrl-C must not reach it
        )
        what = f"{self.name} {self.RUN_NOUN} {run} (`{' '.join(cmd)}`)"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._reaped(self._proc.returncode)
                raise BrokerStartError(
                    f"{what} exited with {self.exit_codes[-1]} before accepting connections "
                    f"on {HOST}:{port}\n{self.log_tail()}"
                )
            if port_accepts(port):
                return
            time.sleep(0.02)
        self.kill9()
        raise BrokerStartError(
            f"{what} did not accept connections on {HOST}:{port} within {START_TIMEOUT}s\n"
            f"{self.log_tail()}"
        )

    def kill9(self) -> int:
        """SIGKILL our run (by PID) and reap it; returns its exit code (-9)."""
        proc = self._proc
        assert proc is not None, f"{self.name}: not running"
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        try:
            code = proc.wait(REAP_TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            raise AssertionError(f"pid {proc.pid} survived SIGKILL for {REAP_TIMEOUT}s") from None
        self._reaped(code)
        return code

    def stop_with(self, sig: signal.Signals, timeout: float) -> int | None:
        """Send ``sig`` to our run (by PID) and reap it; returns its exit code, or None when it
        was still running ``timeout`` seconds later and had to be SIGKILLed (and reaped)."""
        proc = self._proc
        assert proc is not None, f"{self.name}: not running"
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                return None
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

    def log_text(self, run: int = -1) -> str:
        """The log of a run, by index into ``logs`` (-1: the latest)."""
        try:
            return self.logs[run].read_bytes().decode("utf-8", "replace")
        except (OSError, IndexError) as exc:
            return f"<{self.name} log unavailable: {exc}>"

    def log_tail(self, run: int = -1, lines: int = 40) -> str:
        """The last ``lines`` lines of a run's log under a heading that names it."""
        text = self.log_text(run).splitlines()
        number = run + 1 if run >= 0 else len(self.logs) + run + 1
        path = self.logs[run] if -len(self.logs) <= run < len(self.logs) else "no log"
        head = f"--- {self.name} {self.RUN_NOUN} {number} log ({path}) ---"
        return "\n".join([head, *text[-lines:]])

    def events(self, run: int = -1) -> list[dict[str, object]]:
        """The JSON log records of a run (other lines, e.g. a traceback, are skipped)."""
        records: list[dict[str, object]] = []
        for line in self.log_text(run).splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def find_events(self, event: str, run: int = -1) -> list[dict[str, object]]:
        """The JSON log records of a run whose ``event`` is ``event``."""
        return [record for record in self.events(run) if record.get("event") == event]

    def log_lines(self, keep: Callable[[str], bool]) -> Iterator[tuple[int, str]]:
        """(run number from 1, line) for every line of every run's log that ``keep`` accepts."""
        for index in range(len(self.logs)):
            for line in self.log_text(index).splitlines():
                if keep(line):
                    yield index + 1, line
