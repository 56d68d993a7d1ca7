"""Issue 8 end to end: ``bastion demo`` run headless as a user runs it, checked from outside.

1. A bounded run from nothing: the last stdout line is the JSON summary; readings from all
   three sensors, a motion alert, an offline alert (the SIGKILLed sensor's will), the door
   unlocked at QoS 2, the logger storing; the printed ``mosquitto_sub`` command works while
   the demo runs; ``bastion logger query`` returns the readings decrypted; no file of the
   state directory (``*.key`` aside) holds a reading in plaintext.
2. A second run on the same state directory reuses the PKI and every credential, and
   SIGTERM stops it cleanly (children gone, summary printed, exit 0).
3. ``--attack``: every attack is blocked while the sensors keep publishing.

Only processes started here are signalled, by PID; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from support.brokerproc import bastion_cli, bastion_only, free_port, require_tool

pytestmark = [bastion_only("issue 8: the demo runs Bastion itself"), pytest.mark.timeout(300)]

DURATION: Final = 20
RUN_TIMEOUT: Final = 150.0
SENSOR_TOPICS: Final = ("temp/sensor1", "humid/sensor2", "motion/sensor3")
ISOLATED_ENV: Final = ("BASTION_MASTER_KEY", "BASTION_DATA_DIR", "BASTION_PASSWORD")


def demo_env() -> dict[str, str]:
    """Our environment without the variables that would change what the demo uses."""
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class DemoProcess:
    """``bastion demo ...`` with its stdout read line by line as it comes."""

    def __init__(self, *args: str) -> None:
        self.cmd = [*bastion_cli(), "demo", *args]
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=demo_env(),
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first new stdout line matching ``pattern`` (fails after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            match = re.search(pattern, line)
            if match is not None:
                return match
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines[-40:]))

    def finish(self, timeout: float = RUN_TIMEOUT) -> int:
        """Wait for the exit (killing it by PID after ``timeout``); the exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{' '.join(self.cmd)} ran over {timeout}s") from None
        self._reader.join(10)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return code

    def kill(self) -> None:
        """SIGKILL the demo if it still runs, then the children it said it started."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            for pid in self.child_pids(with_broker=True):
                kill_if_bastion(pid)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    @property
    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def summary(self) -> dict[str, Any]:
        """The last stdout line, which must be one JSON object."""
        tail = "\n".join(self.lines[-30:]) + "\n--- stderr ---\n" + self.stderr[-3000:]
        assert self.lines, f"the demo printed nothing\n{tail}"
        try:
            summary = json.loads(self.lines[-1])
        except ValueError:
            raise AssertionError(f"the last line is not the JSON summary:\n{tail}") from None
        assert isinstance(summary, dict), tail
        return summary

    def child_pids(self, *, with_broker: bool = False) -> list[int]:
        """The PIDs of the services (and the broker), as the demo printed them."""
        pids: list[int] = []
        for line in self.lines:
            started = line.startswith("demo: started ")
            if started or (with_broker and line.startswith("demo: broker running (pid")):
                pids += [int(pid) for pid in re.findall(r"\(pid (\d+)\)", line)]
        return pids


def kill_if_bastion(pid: int) -> None:
    """SIGKILL ``pid`` if it is still one of the demo's ``bastion`` children (not a reused PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"bastion" in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def demo(*args: str) -> Iterator[DemoProcess]:
    process = DemoProcess(*args)
    try:
        yield process
    finally:
        process.kill()


@dataclass(frozen=True)
class Run:
    """A finished demo run and what was observed around it."""

    state_dir: Path
    code: int
    lines: list[str]
    stderr: str
    summary: dict[str, Any]
    subscriber: subprocess.CompletedProcess[str]
    children: list[int]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*bastion_cli(), *args],
        capture_output=True,
        text=True,
        env=demo_env(),
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def run_printed_subscriber(command: str) -> subprocess.CompletedProcess[str]:
    """The ``mosquitto_sub`` line exactly as printed, plus: stop after 3 messages or 15 s."""
    return subprocess.run(
        ["bash", "-c", f"{command} -C 3 -W 15"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """``bastion demo --duration 20`` from nothing; the printed subscriber runs meanwhile."""
    require_tool("mosquitto_sub")
    state_dir = tmp_path_factory.mktemp("demo") / "state"
    args = ["--state-dir", str(state_dir), "--duration", str(DURATION), "--port", str(free_port())]
    with demo(*args) as process:
        match = process.wait_for_line(r"^demo: watch it yourself: (mosquitto_sub .*)$", 90.0)
        subscriber = run_printed_subscriber(match.group(1))
        code = process.finish()
        return Run(
            state_dir,
            code,
            process.lines,
            process.stderr,
            process.summary(),
            subscriber,
            process.child_pids(),
        )


def query(state_dir: Path, topic: str) -> list[dict[str, Any]]:
    result = run_cli(
        "logger", "query", "--state-dir", str(state_dir), "--topic", topic, "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


def test_the_summary_shows_the_whole_system_working(first_run: Run) -> None:
    summary = first_run.summary
    assert first_run.code == 0, "\n".join(first_run.lines[-30:]) + first_run.stderr
    readings = summary["readings"]
    assert set(readings) == set(SENSOR_TOPICS)
    assert all(readings[topic] > 0 for topic in SENSOR_TOPICS), readings
    assert summary["alerts"] >= 2
    assert summary["alerts_by_kind"].get("motion", 0) >= 1
    assert summary["offline_alerts"] >= 1
    assert summary["logged"] > sum(readings.values()) // 2
    assert summary["attacks"] == {"tried": 0, "blocked": 0, "by_control": {}, "results": []}
    assert summary["killed"]["device"] == "sensor2"
    assert summary["statuses"]["sensor2"] == "offline"
    assert summary["errors"] == []
    assert summary["reused_state"] is False
    results = summary["door"]["results"]
    assert any(r["outcome"] == "accepted" and r["state"] == "unlocked" for r in results)
    assert all(r["qos"] == 2 for r in results)
    assert summary["door"]["commands"][0]["completed"] is True


def test_the_printed_subscriber_command_works(first_run: Run) -> None:
    result = first_run.subscriber
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    topics = [line.split(" ", 1)[0] for line in lines]
    assert all(re.fullmatch(r"(temp|humid|motion|status|alerts|result|cmd)/.+", t) for t in topics)


def test_the_report_says_where_everything_is(first_run: Run) -> None:
    text = "\n".join(first_run.lines)
    for path in ("bastion.toml", "logger.db", "logs", "pki"):
        assert str(first_run.state_dir / path) in text
    assert "SIGKILL sensor2" in text
    assert json.loads((first_run.state_dir / "summary.json").read_text()) == first_run.summary


def test_the_logger_has_every_sensor_decrypted(first_run: Run) -> None:
    units = {"temp/#": "°C", "humid/#": "%", "motion/#": "event"}
    for topic, unit in units.items():
        rows = query(first_run.state_dir, topic)
        assert rows, f"nothing logged on {topic}"
        payloads = [row["payload"] for row in rows]
        assert all(p["unit"] == unit and "value" in p and "ts" in p for p in payloads), payloads[:3]


def test_no_reading_is_stored_in_plaintext(first_run: Run) -> None:
    rows = query(first_run.state_dir, "#")
    readings = [row["payload"] for row in rows if row["topic"] in SENSOR_TOPICS]
    assert readings
    needles = [b'"unit"']
    needles += [f'"ts":"{reading["ts"]}"'.encode() for reading in readings]
    needles += [json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() for r in readings]
    checked = 0
    for path in sorted(first_run.state_dir.rglob("*")):
        if not path.is_file() or path.suffix == ".key":
            continue
        data = path.read_bytes()
        checked += 1
        for needle in needles:
            assert needle not in data, f"{path} holds {needle!r} in plaintext"
    names = {p.name for p in first_run.state_dir.rglob("*")}
    assert {"logger.db", "bastion.db", "broker.log", "sensor1.log", "logger.log"} <= names
    assert checked >= 15


def test_the_state_directory_is_private(first_run: Run) -> None:
    root = first_run.state_dir

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(root) == 0o700
    assert mode(root / "credentials") == 0o700
    credentials = sorted((root / "credentials").iterdir())
    assert len(credentials) == 9
    assert all(mode(path) == 0o600 for path in credentials)
    assert mode(root / "passwd") == 0o600
    assert mode(root / "pki" / "ca.key") == 0o600
    assert mode(root / "master.key") == 0o600


def test_a_second_run_reuses_everything_and_sigterm_stops_it_cleanly(first_run: Run) -> None:
    root = first_run.state_dir
    kept = [root / "pki" / "ca.crt", root / "pki" / "server.crt", root / "master.key"]
    kept += sorted((root / "credentials").iterdir())
    before = {path: path.read_bytes() for path in kept}
    args = ["--state-dir", str(root), "--duration", "0", "--port", str(free_port())]
    with demo(*args) as process:
        process.wait_for_line(r"^demo: running until Ctrl-C", 90.0)
        time.sleep(4.0)
        os.kill(process.proc.pid, signal.SIGTERM)
        code = process.finish(60.0)
        text = "\n".join(process.lines)
        assert code == 0, text + process.stderr
        summary = process.summary()
    assert "reusing 9 client passwords" in text
    assert "reusing the dev CA and server certificate" in text
    assert {path: path.read_bytes() for path in kept} == before
    assert summary["reused_state"] is True
    assert summary["interrupted"] is True
    assert summary["readings"]["temp/sensor1"] > 0
    assert set(summary["services"].values()) == {"stopped"}
    assert_gone(process.child_pids())


def assert_gone(pids: list[int]) -> None:
    assert len(pids) == 6
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, 0)
            raise AssertionError(f"child {pid} of the demo is still running")


def test_with_attack_every_attack_is_blocked_while_sensors_keep_flowing(
    tmp_path: Path,
) -> None:
    args = ["--state-dir", str(tmp_path / "attacked"), "--duration", "25", "--attack"]
    args += ["--port", str(free_port())]
    with demo(*args) as process:
        code = process.finish()
        summary = process.summary()
        text = "\n".join(process.lines)
    attacks = summary["attacks"]
    assert code == 0, text
    assert attacks["tried"] >= 11
    assert attacks["blocked"] == attacks["tried"], attacks["results"]
    assert sum(attacks["by_control"].values()) == attacks["tried"]
    for needed in ("ACL", "rate limit", "ban", "TLS 1.3 minimum", "authentication"):
        assert needed in attacks["by_control"], attacks["by_control"]
    flow = summary["flow"]
    assert flow["kept_flowing"] is True, flow
    assert flow["during_attack_per_s"]["temp/sensor1"] > 0
    assert summary["offline_alerts"] >= 1
    assert sum(summary["security_events"].values()) >= attacks["tried"]
    assert all(f"attack '{r['name']}': blocked" in text for r in attacks["results"])
