"""Start and stop the broker under test as a real process on 127.0.0.1.

``BASTION_TEST_BROKER=mosquitto`` swaps Bastion for Debian's mosquitto, the reference broker the
suite is validated against. Used by ``conftest.py``; the tests import the markers from here.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import pytest

HOST: Final = "127.0.0.1"
BROKER_KIND: Final = os.environ.get("BASTION_TEST_BROKER", "bastion").strip().lower() or "bastion"
if BROKER_KIND not in ("bastion", "mosquitto"):
    raise RuntimeError(f"BASTION_TEST_BROKER must be 'bastion' or 'mosquitto', not {BROKER_KIND!r}")
USING_MOSQUITTO: Final = BROKER_KIND == "mosquitto"
IN_CI: Final = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

START_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 10.0
LOG_TAIL_CHARS: Final = 20_000


def bastion_only(reason: str) -> pytest.MarkDecorator:
    """Skip under the mosquitto switch: the test checks a documented Bastion difference."""
    return pytest.mark.skipif(USING_MOSQUITTO, reason=f"Bastion-specific behaviour: {reason}")


def require_tool(name: str) -> str:
    """Path of an external tool; missing means skip locally but fail loudly under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = f"required tool {name!r} is not installed (apt-get install mosquitto-clients)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller retries on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


class BrokerStartError(Exception):
    """The broker process exited or never accepted connections."""


@dataclass(eq=False)
class Broker:
    """One running broker process that this test session started (and only it may stop)."""

    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    config_path: Path | None
    _log_file: IO[bytes] | None = field(default=None, repr=False)
    exit_code: int | None = None

    host: str = HOST

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, limit: int = LOG_TAIL_CHARS) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError as exc:
            return f"<broker log unavailable: {exc}>"
        text = data.decode("utf-8", "replace")
        return text if len(text) <= limit else "...\n" + text[-limit:]

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal our own process by PID and wait (bounded); SIGKILL it if it hangs."""
        if self.exit_code is not None:
            return self.exit_code
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.exit_code = self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
                    self.exit_code = -9
                    raise AssertionError(
                        f"{self.kind} (pid {self.pid}) ignored {sig.name} for {timeout}s and was "
                        f"killed\n--- broker log ---\n{self.log_tail()}"
                    ) from None
            else:
                self.exit_code = self.proc.returncode
            return self.exit_code
        finally:
            _RUNNING.discard(self)
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None


_RUNNING: set[Broker] = set()


def running_brokers() -> list[Broker]:
    return sorted(_RUNNING, key=lambda b: b.pid)


@atexit.register
def _kill_leftovers() -> None:  # last resort if a fixture finalizer never ran
    for broker in list(_RUNNING):
        with contextlib.suppress(OSError):
            broker.proc.kill()
            broker.proc.wait(5)


def _bastion_command(port: int, config: Path | None) -> list[str]:
    python = os.environ.get("BASTION_TEST_PYTHON", sys.executable)
    cmd = [python, "-m", "bastion", "serve", "--listen", f"{HOST}:{port}", "--allow-anonymous"]
    cmd += ["--log-format", "json"]
    if config is not None:
        cmd += ["-c", str(config)]
    return cmd


def _mosquitto_command(port: int, config: Path) -> list[str]:
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if exe is None:
        message = "BASTION_TEST_BROKER=mosquitto but the mosquitto broker is not installed"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return [exe, "-c", str(config)]


def _mosquitto_conf(port: int, extra: str) -> str:
    return (
        f"listener {port} {HOST}\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "log_dest stderr\n"
        "log_type all\n"
        "log_timestamp_format %H:%M:%S\n" + extra + "\n"
    )


def start_broker(
    workdir: Path, *, bastion_toml: str = "", mosquitto_conf: str = "", name: str = "broker"
) -> Broker:
    """Start the broker under test on a fresh port and wait until it accepts TCP connections.

    ``bastion_toml`` is written to a ``-c`` config file for Bastion; ``mosquitto_conf`` is
    appended to the generated mosquitto.conf. Retries a few times if the port was taken.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    last_error: BrokerStartError | None = None
    for attempt in range(3):
        port = free_port()
        stem = f"{name}-{port}-{attempt}"
        config: Path | None
        if USING_MOSQUITTO:
            config = workdir / f"{stem}.conf"
            config.write_text(_mosquitto_conf(port, mosquitto_conf))
            cmd: Sequence[str] = _mosquitto_command(port, config)
        else:
            config = None
            if bastion_toml.strip():
                config = workdir / f"{stem}.toml"
                config.write_text(bastion_toml)
            cmd = _bastion_command(port, config)
        try:
            return _launch(cmd, port, config, workdir / f"{stem}.log")
        except BrokerStartError as exc:
            last_error = exc
            if "address already in use" not in str(exc).lower():
                break
    assert last_error is not None
    raise last_error


def _launch(cmd: Sequence[str], port: int, config: Path | None, log_path: Path) -> Broker:
    log_file = log_path.open("wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        list(cmd),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # a Ctrl-C in the terminal must not reach it; we signal it
    )
    broker = Broker(BROKER_KIND, port, proc, log_path, config, log_file)
    _RUNNING.add(broker)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            broker.stop()
            raise BrokerStartError(
                f"{' '.join(cmd)} exited with {proc.returncode} before accepting connections\n"
                f"--- broker log ---\n{broker.log_tail()}"
            )
        if port_accepts(port):
            return broker
        time.sleep(0.05)
    with contextlib.suppress(AssertionError):
        broker.stop(signal.SIGKILL, timeout=5)
    raise BrokerStartError(
        f"{' '.join(cmd)} did not accept connections on {HOST}:{port} within {START_TIMEOUT}s\n"
        f"--- broker log ---\n{broker.log_tail()}"
    )
