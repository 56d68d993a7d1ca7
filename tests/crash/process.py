"""One broker that is killed with SIGKILL and restarted on the same port and data directory.

Every start is an *incarnation* with a log file of its own; the number of the current one is
shared with the clients, so each CONNACK they see is tagged with the broker run that sent it.
Only the process this object started is ever signalled, by its PID; the start, stop and kill
mechanics are ``support.restartable``'s, shared with the e2e suite.

``BASTION_TEST_BROKER=mosquitto`` runs Debian's mosquitto instead (no persistence): it is the
reference the harness itself is validated against in the control run; mosquitto's own
persistence is periodic, so the kill runs are Bastion-only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Final

from support.brokerproc import HOST, USING_MOSQUITTO, bastion_cli
from support.restartable import STOP_TIMEOUT, RestartableProcess


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


class CrashBroker(RestartableProcess):
    """The broker under test, restartable after ``kill9`` on the same port and data dir.

    Each run is an *incarnation*; its number advances before its process exists, so no
    CONNACK of the new run can be tagged with the old number.
    """

    RUN_NOUN = "incarnation"

    def __init__(self, workdir: Path) -> None:
        self.kind = "mosquitto" if USING_MOSQUITTO else "bastion"
        super().__init__(workdir, self.kind)
        self.data_dir = workdir / "data"
        self.incarnation = Incarnation()

    def log_name(self, run: int) -> str:
        return f"{self.kind}-{run}.log"

    def before_launch(self, run: int) -> None:
        number = self.incarnation.advance()
        assert number == run, f"incarnation {number} does not match run {run}"

    def command(self, port: int) -> list[str]:
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

    def stop(self) -> int | None:
        """SIGTERM the current incarnation, wait (bounded), SIGKILL it if it hangs.

        Returns its exit code (-9 when it had to be killed), or None when nothing was running.
        """
        if self.pid is None:
            return None
        code = self.stop_with(signal.SIGTERM, STOP_TIMEOUT)
        return -int(signal.SIGKILL) if code is None else code

    # ------------------------------------------------------------------ logs

    def log_digest(self, tail_lines: int = 30, max_notable: int = 60) -> str:
        """What a failure report needs from the logs of every incarnation: how each one
        started and what it restored, its warnings and errors, and the tail of the last one."""
        notable = [f"[{number}] {line}" for number, line in self.log_lines(_is_notable)]
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
