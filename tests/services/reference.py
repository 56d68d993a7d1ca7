"""The reference deployment the service tests run against: PKI, one password per client, ACL.

Mirrors what ``bastion demo`` builds (least-privilege ACL per client, TLS only), and runs the
broker as a real ``bastion serve`` process that can be restarted on the same port. Only
processes started here are signalled, by PID; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import argon2

from bastion.security.passwords import PasswordFile
from support.brokerproc import HOST, bastion_cli, free_port, port_accepts
from support.pahoclient import Message, PahoClient

START_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 10.0
CLI_TIMEOUT: Final = 60.0
EVENT_TIMEOUT: Final = 20.0
WAIT: Final = 20.0  # the longest a test waits for one expected message

CLIENTS: Final = (
    "sensor1",
    "sensor2",
    "sensor3",
    "door1",
    "alerts",
    "logger",
    "dashboard",
    "viewer",
    "operator",
    "intruder",  # has an account and no rules: denied everything
)

ACL_TEXT: Final = """\
# The reference system: every client may do its job and nothing else.
user sensor1
topic write temp/sensor1
topic write status/sensor1

user sensor2
topic write humid/sensor2
topic write status/sensor2

user sensor3
topic write motion/sensor3
topic write status/sensor3

user door1
topic read cmd/door1
topic write result/door1
topic write status/door1

user alerts
topic read motion/#
topic read status/#
topic read temp/#
topic read humid/#
topic write alerts/#

user logger
topic read #

user dashboard
topic read temp/#

user viewer
topic read #

user operator
topic write cmd/door1
topic read result/door1
"""

BROKER_TOML: Final = """\
[security]
client_id_patterns = ["%u", "%u-*"]
"""


def password_of(client: str) -> str:
    return f"{client}: test password"


@dataclass(frozen=True, slots=True)
class Deployment:
    """The files of the deployment (session-wide, never modified)."""

    directory: Path

    @property
    def pki(self) -> Path:
        return self.directory / "pki"

    @property
    def ca(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def password_file(self) -> Path:
        return self.directory / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.directory / "acl"

    @property
    def config(self) -> Path:
        return self.directory / "bastion.toml"

    def credential(self, client: str) -> Path:
        """``credentials/<client>.password`` (0600): the password on its first line."""
        return self.directory / "credentials" / f"{client}.password"

    def client_args(self, client: str, port: int, *, client_id: str | None = None) -> list[str]:
        """The connection options of a service command connecting as ``client``."""
        return [
            "--host",
            HOST,
            "--port",
            str(port),
            "--cafile",
            str(self.ca),
            "--username",
            client,
            "--password-file",
            str(self.credential(client)),
            "--client-id",
            client_id or client,
        ]


def run_cli(args: Sequence[str], *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``bastion ARGS`` as a separate process (bounded), expected to succeed."""
    result = subprocess.run(
        [*bastion_cli(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"bastion {' '.join(args[:2])} ... exited {result.returncode}\n{result.stderr}"
    )
    return result


def make_deployment(directory: Path) -> Deployment:
    """Create the PKI (``bastion pki init``), password file, credentials, ACL and config."""
    deployment = Deployment(directory)
    directory.mkdir(parents=True, exist_ok=True)
    run_cli(["pki", "init", str(deployment.pki)])
    passwords = PasswordFile(argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST))
    (directory / "credentials").mkdir(mode=0o700, exist_ok=True)
    for client in CLIENTS:
        passwords.set(client, password_of(client).encode())
        path = deployment.credential(client)
        path.write_text(password_of(client) + "\n")
        os.chmod(path, 0o600)
    passwords.save(deployment.password_file)
    deployment.acl_file.write_text(ACL_TEXT)
    deployment.config.write_text(BROKER_TOML)
    return deployment


class BrokerProcess:
    """``bastion serve`` on a TLS port of its own, stopped and started again on that port."""

    def __init__(self, deployment: Deployment, workdir: Path) -> None:
        self.deployment = deployment
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0

    def command(self) -> list[str]:
        pki = self.deployment.pki
        return [
            *bastion_cli(),
            "serve",
            "-c",
            str(self.deployment.config),
            "--tls-listen",
            f"{HOST}:{self.port}",
            "--certfile",
            str(pki / "server.crt"),
            "--keyfile",
            str(pki / "server.key"),
            "--password-file",
            str(self.deployment.password_file),
            "--acl-file",
            str(self.deployment.acl_file),
            "--data-dir",
            str(self.workdir / "state"),
            "--log-format",
            "json",
        ]

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    def log_tail(self, limit: int = 8000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-limit:]
        return "<no broker log>"

    def start(self) -> None:
        """Start (on a fresh port the first time, the same port afterwards); wait until up."""
        assert self.proc is None, "broker already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        attempts = 3 if self.port == 0 else 1
        for _ in range(attempts):
            if self.starts == 0:
                self.port = free_port()
            if self._launch():
                self.starts += 1
                return
        raise AssertionError(f"broker did not start on port {self.port}\n{self.log_tail()}")

    def _launch(self) -> bool:
        self._log = self.log_path.open("ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("BASTION_MASTER_KEY", None)
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reap()
                return False
            if port_accepts(self.port):
                return True
            time.sleep(0.05)
        self.stop(signal.SIGKILL)
        return False

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Signal our broker by PID and wait (bounded; SIGKILL if it hangs)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        code = proc.returncode
        self._reap()
        return code

    def _reap(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        self.proc = None


class ServiceProcess:
    """One ``bastion sensor|alerts|doorlock ...`` process; stderr (JSON log lines) to a file."""

    def __init__(self, args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None):
        self.log_path = log_path
        self._log = log_path.open("wb")
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(
            [*bastion_cli(), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=full_env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, object]]:
        """The JSON log objects written so far (those named ``name``, if given)."""
        found: list[dict[str, object]] = []
        for line in self.log_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and (name is None or entry.get("event") == name):
                found.append(entry)
        return found

    def wait_event(
        self, name: str, *, count: int = 1, timeout: float = EVENT_TIMEOUT
    ) -> list[dict[str, object]]:
        """Wait (bounded) until ``count`` log events ``name`` were written; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(name)
            if len(found) >= count:
                return found
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                raise AssertionError(
                    f"no {count} x {name!r} in the log of pid {self.pid} within {timeout}s "
                    f"(exit {self.proc.poll()})\n{self.log_text()[-4000:]}"
                )
            time.sleep(0.05)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self._log.close()

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal our own process by PID and wait (bounded; SIGKILL if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def collect_until(
    client: PahoClient, done: Callable[[list[Message]], bool], timeout: float = WAIT
) -> list[Message]:
    """Messages delivered to ``client`` until ``done(messages)`` holds (bounded wait)."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        left = deadline - time.monotonic()
        assert left > 0, f"condition not met within {timeout}s; got {got}"
        got.append(client.expect(timeout=left))
    return got


def drain(client: PahoClient, quiet: float) -> list[Message]:
    """Whatever is delivered to ``client`` until nothing arrives for ``quiet`` seconds."""
    got: list[Message] = []
    while True:
        try:
            got.append(client.messages.get(timeout=quiet))
        except queue.Empty:
            return got
        if len(got) > 10_000:
            raise AssertionError("more than 10000 unexpected messages")
