"""Plumbing of the e2e persistence suite: ``bastion serve`` processes that can be stopped and
started again with the same command line (same port, same data directory), one-shot starts
that are expected to be refused, the ``bastion`` CLI as a separate process, and clients that
are closed after each test.

Only processes started here are ever signalled, by PID; every wait is bounded. The broker and
the CLI run without ``$BASTION_MASTER_KEY`` / ``$BASTION_DATA_DIR`` from the caller's
environment unless a test sets them, so a developer's shell cannot change what is tested.
A failed test gets the digest of every broker log it produced in its report.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from support.brokerproc import HOST, bastion_cli, free_port
from support.clients import loopback_address
from support.pahoclient import V5, PahoClient, PahoWill, PropInput
from support.rawclient import MQTT_5, RawClient
from support.restartable import REAP_TIMEOUT, STOP_TIMEOUT, RestartableProcess

CLI_TIMEOUT: Final = 60.0
ISOLATED_ENV: Final = ("BASTION_MASTER_KEY", "BASTION_DATA_DIR")


def process_env(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a broker or CLI process: ours, minus the key and data-dir variables,
    plus ``overrides`` (a None value removes a variable)."""
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in (overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _notable(line: str) -> bool:
    """A warning, an error, a traceback or a restore report in a JSON log line."""
    lowered = line.lower()
    return any(w in lowered for w in ('"warning"', '"error"', "traceback", "restored"))


class ServeProcess(RestartableProcess):
    """One ``bastion serve`` command line, started again and again on the same port.

    The first start picks a free port (another one if it lost a race for it); each start is
    a *run* with a log file of its own (JSON lines: stdout and stderr together).
    """

    def __init__(
        self,
        workdir: Path,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str | None] | None = None,
        cwd: Path | None = None,
    ) -> None:
        super().__init__(workdir, name)
        self.args = list(args)
        self.env = process_env(env)
        self.cwd = cwd

    def command(self, port: int | None = None) -> list[str]:
        """``bastion serve --listen 127.0.0.1:PORT --allow-anonymous ARGS --log-format json``."""
        listen = f"{HOST}:{self.port if port is None else port}"
        return [
            *bastion_cli(),
            "serve",
            "--listen",
            listen,
            "--allow-anonymous",
            *self.args,
            "--log-format",
            "json",
        ]

    def launch_env(self) -> dict[str, str]:
        return self.env

    def launch_cwd(self) -> Path | None:
        return self.cwd

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` to our run (by PID) and reap it; SIGKILL it if it hangs (then fail)."""
        pid = self.pid
        assert pid is not None, f"{self.name}: not running"
        code = self.stop_with(sig, timeout)
        if code is None:
            raise AssertionError(
                f"{self.name} (pid {pid}) ignored {sig.name} for {timeout}s and was "
                f"killed\n{self.log_tail()}"
            )
        return code

    def digest(self) -> str:
        """Warnings, errors and restore reports of every run, then the tail of the last."""
        notable = [f"[run {run}] {line}" for run, line in self.log_lines(_notable)]
        head = f"=== {self.name}: {len(self.logs)} run(s), exit codes {self.exit_codes} ==="
        parts = [head, *notable[:60]]
        if self.logs:
            parts.append(self.log_tail())
        return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class Refusal:
    """How a start that should be refused ended."""

    code: int
    stdout: str
    stderr: str
    seconds: float

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("bastion: error:")]


class OneShotServe:
    """``bastion serve`` started once, expected to exit by itself (a refused start)."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str | None] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.cmd = [
            *bastion_cli(),
            "serve",
            "--listen",
            f"{HOST}:{free_port()}",
            "--allow-anonymous",
            *args,
            "--log-format",
            "json",
        ]
        self._out_path = workdir / f"{name}.stdout"
        self._err_path = workdir / f"{name}.stderr"
        self._out = self._out_path.open("wb")
        self._err = self._err_path.open("wb")
        self.started = time.monotonic()
        self.exited_at: float | None = None
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            env=process_env(env),
            start_new_session=True,
        )

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def poll(self) -> int | None:
        """The exit code once it exited (its time noted in ``exited_at``), else None."""
        code = None if self._proc is None else self._proc.poll()
        if code is not None and self.exited_at is None:
            self.exited_at = time.monotonic()
        return code

    def wait(self, timeout: float) -> Refusal:
        """The exit, at most ``timeout`` s after the start; a broker still up then is killed
        (by PID) and the test fails: it started on state it should have refused."""
        proc = self._proc
        assert proc is not None, f"{self.name}: already waited for"
        deadline = self.started + timeout
        try:
            while self.poll() is None:
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(self.cmd, timeout)
                time.sleep(0.01)
            code = proc.wait(REAP_TIMEOUT)
            assert self.exited_at is not None
            seconds = self.exited_at - self.started
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(REAP_TIMEOUT)
            self._close()
            raise AssertionError(
                f"{self.name}: `{' '.join(self.cmd)}` was still running after {timeout}s "
                f"(expected a refusal)\n--- stdout ---\n{self._read(self._out_path)[-4000:]}"
                f"\n--- stderr ---\n{self._read(self._err_path)[-4000:]}"
            ) from None
        self._close()
        return Refusal(code, self._read(self._out_path), self._read(self._err_path), seconds)

    def _close(self) -> None:
        self._proc = None
        self._out.close()
        self._err.close()

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait(REAP_TIMEOUT)
        if self._proc is not None:
            self._close()

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_bytes().decode("utf-8", "replace")
        except OSError as exc:
            return f"<unavailable: {exc}>"


def run_cli(
    *args: str,
    env: Mapping[str, str | None] | None = None,
    timeout: float = CLI_TIMEOUT,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``bastion ARGS`` as a separate process, bounded by ``timeout`` (killed after it)."""
    return subprocess.run(
        [*bastion_cli(), *args],
        input="" if stdin is None else stdin,
        capture_output=True,
        text=True,
        env=process_env(env),
        timeout=timeout,
        check=False,
    )


class Processes:
    """Everything one test started; whatever still runs at its end is killed by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.brokers: list[ServeProcess] = []
        self.oneshots: list[OneShotServe] = []

    def serve(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str | None] | None = None,
        cwd: Path | None = None,
        start: bool = True,
    ) -> ServeProcess:
        broker = ServeProcess(self.workdir / "logs", name, args, env=env, cwd=cwd)
        self.brokers.append(broker)
        if start:
            broker.start()
        return broker

    def refused(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str | None] | None = None,
    ) -> OneShotServe:
        oneshot = OneShotServe(self.workdir / "logs", name, args, env=env)
        self.oneshots.append(oneshot)
        return oneshot

    def wait_refusals(self, oneshots: Sequence[OneShotServe], timeout: float) -> list[Refusal]:
        """Wait for all of ``oneshots`` at once (each exit time noted when it happens)."""
        deadline = time.monotonic() + timeout
        while any(o.poll() is None for o in oneshots) and time.monotonic() < deadline:
            time.sleep(0.01)
        return [o.wait(timeout) for o in oneshots]

    def cleanup(self) -> list[str]:
        """Kill what still runs; returns the names of brokers that had to be killed."""
        killed: list[str] = []
        for oneshot in self.oneshots:
            oneshot.kill()
        for broker in self.brokers:
            if broker.running():
                killed.append(broker.name)
                broker.kill9()
        return killed


_PROCESSES = pytest.StashKey[Processes]()


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    request.node.stash[_PROCESSES] = processes
    yield processes
    processes.cleanup()


class ClientPool:
    """Clients of one test, all from one loopback address of the test's own (so the broker's
    per-IP limits never add up across tests); closed after the test."""

    def __init__(self) -> None:
        self.source = loopback_address()
        self._paho: list[PahoClient] = []
        self._raw: list[RawClient] = []

    def paho(
        self,
        port: int,
        client_id: str,
        *,
        version: int = V5,
        clean: bool = True,
        properties: Mapping[str, PropInput] | None = None,
        will: PahoWill | None = None,
        username: str | None = None,
        password: str | None = None,
        connect: bool = True,
    ) -> PahoClient:
        client = PahoClient(
            HOST,
            port,
            client_id=client_id,
            version=version,
            clean=clean,
            properties=properties,
            will=will,
            username=username,
            password=password,
            source=self.source,
        )
        self._paho.append(client)
        if connect:
            result = client.connect()
            assert result.reason_code == 0, f"{client_id}: CONNACK refused: {result}"
        return client

    def raw(self, port: int, version: int = MQTT_5, timeout: float = 5.0) -> RawClient:
        client = RawClient(HOST, port, version=version, timeout=timeout, source=self.source)
        self._raw.append(client)
        return client

    def close_all(self) -> None:
        for raw in self._raw:
            raw.close()
        for client in self._paho:
            client.close()


@pytest.fixture
def clients() -> Iterator[ClientPool]:
    pool = ClientPool()
    yield pool
    pool.close_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, attach the log digest of every broker the test started."""
    report = yield
    processes = item.stash.get(_PROCESSES, None)
    if report.failed and processes is not None:
        for broker in processes.brokers:
            report.sections.append((f"broker {broker.name} (port {broker.port})", broker.digest()))
    return report
