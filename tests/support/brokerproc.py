"""Start and stop the broker under test as a real process on 127.0.0.1.

``BASTION_TEST_BROKER=mosquitto`` swaps Bastion for Debian's mosquitto, the reference broker the
suites are validated against. A ``BrokerSetup`` says how it is secured (credentials, ACL, TLS)
and becomes Bastion's command-line switches (issue 4) or their mosquitto.conf equivalents.
Used by the conftests and ``clients.py``; the tests import the markers from here.
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

from .settings import toml_value

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


def require_tool(name: str, package: str = "mosquitto-clients") -> str:
    """Path of an external tool; missing means skip locally but fail loudly under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = f"required tool {name!r} is not installed (apt-get install {package})"
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


@dataclass(frozen=True, slots=True)
class TlsListener:
    """A TLS listener beside the plain one: ``--tls-listen`` with ``--certfile`` ... for Bastion.

    ``min_version`` None keeps the broker's default (Bastion: TLS 1.3; mosquitto is told
    ``tls_version tlsv1.3`` to match). Setting it puts both listeners in the TOML file instead,
    because the command line has no switch for it.
    """

    certfile: Path
    keyfile: Path
    cafile: Path | None = None
    require_certificate: bool = False
    min_version: str | None = None


@dataclass(frozen=True, slots=True)
class BrokerSetup:
    """How the broker under test is secured. The default is the development setup of the
    interop suite: anonymous clients allowed, no password file, no ACL, no TLS."""

    allow_anonymous: bool = True
    password_file: Path | None = None
    acl_file: Path | None = None
    tls: TlsListener | None = None


DEV_SETUP: Final = BrokerSetup()


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
    tls_port: int | None = None  # the TLS listener's port, when the setup has one
    setup: BrokerSetup = DEV_SETUP

    host: str = HOST

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        """The whole log so far (JSON lines for Bastion)."""
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except OSError as exc:
            return f"<broker log unavailable: {exc}>"

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal our own broker process by PID (e.g. SIGHUP to reload its files)."""
        assert self.proc.poll() is None, f"{self.kind} (pid {self.pid}) is not running"
        self.proc.send_signal(sig)

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


def bastion_cli() -> list[str]:
    """The command that runs ``bastion`` (the same Python as the broker under test)."""
    return [os.environ.get("BASTION_TEST_PYTHON", sys.executable), "-m", "bastion"]


def _bastion_command(
    port: int,
    tls_port: int | None,
    setup: BrokerSetup,
    config: Path | None,
    data_dir: Path | None = None,
) -> list[str]:
    cmd = [*bastion_cli(), "serve"]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    tls = setup.tls
    if tls is None or tls.min_version is None:  # otherwise the listeners are in the TOML file
        cmd += ["--listen", f"{HOST}:{port}"]
        if tls is not None:
            assert tls_port is not None
            cmd += ["--tls-listen", f"{HOST}:{tls_port}"]
            cmd += ["--certfile", str(tls.certfile), "--keyfile", str(tls.keyfile)]
            if tls.cafile is not None:
                cmd += ["--cafile", str(tls.cafile)]
            if tls.require_certificate:
                cmd.append("--require-certificate")
    if setup.allow_anonymous:
        cmd.append("--allow-anonymous")
    if setup.password_file is not None:
        cmd += ["--password-file", str(setup.password_file)]
    if setup.acl_file is not None:
        cmd += ["--acl-file", str(setup.acl_file)]
    cmd += ["--log-format", "json"]
    if config is not None:
        cmd += ["-c", str(config)]
    return cmd


def _bastion_listeners_toml(port: int, tls_port: int, tls: TlsListener) -> str:
    """Both listeners as ``[[listeners]]`` tables (used when the TLS minimum is configured)."""
    lines = [
        "",
        "[[listeners]]",
        f"host = {toml_value(HOST)}",
        f"port = {port}",
        "",
        "[[listeners]]",
        f"host = {toml_value(HOST)}",
        f"port = {tls_port}",
        "",
        "[listeners.tls]",
        f"certfile = {toml_value(str(tls.certfile))}",
        f"keyfile = {toml_value(str(tls.keyfile))}",
    ]
    if tls.cafile is not None:
        lines.append(f"cafile = {toml_value(str(tls.cafile))}")
    if tls.require_certificate:
        lines.append("require_certificate = true")
    if tls.min_version is not None:
        lines.append(f"min_version = {toml_value(tls.min_version)}")
    return "\n".join(lines) + "\n"


def _mosquitto_command(config: Path) -> list[str]:
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if exe is None:
        message = "BASTION_TEST_BROKER=mosquitto but the mosquitto broker is not installed"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return [exe, "-c", str(config)]


def _mosquitto_conf(port: int, tls_port: int | None, setup: BrokerSetup, extra: str) -> str:
    """mosquitto.conf equivalent of the setup. The plain listener comes last, so that
    listener-specific lines in ``extra`` (e.g. ``max_connections``) apply to it."""
    lines: list[str] = []
    tls = setup.tls
    if tls is not None:
        assert tls_port is not None
        lines += [
            f"listener {tls_port} {HOST}",
            f"certfile {tls.certfile}",
            f"keyfile {tls.keyfile}",
        ]
        if tls.cafile is not None:
            lines.append(f"cafile {tls.cafile}")
        if tls.require_certificate:
            lines.append("require_certificate true")
        lines.append(f"tls_version tlsv{tls.min_version or '1.3'}")
    lines.append(f"listener {port} {HOST}")
    lines.append(f"allow_anonymous {'true' if setup.allow_anonymous else 'false'}")
    if setup.password_file is not None:
        lines.append(f"password_file {setup.password_file}")
    if setup.acl_file is not None:
        lines.append(f"acl_file {setup.acl_file}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        lines.append("user root")  # keep root's access to the 0600 files in pytest's 0700 tmp
    lines += [
        "persistence false",
        "log_dest stderr",
        "log_type all",
        "log_timestamp_format %H:%M:%S",
    ]
    return "\n".join(lines) + "\n" + extra + "\n"


def start_broker(
    workdir: Path,
    *,
    bastion_toml: str = "",
    mosquitto_conf: str = "",
    name: str = "broker",
    setup: BrokerSetup = DEV_SETUP,
    data_dir: Path | None = None,
) -> Broker:
    """Start the broker under test on fresh ports and wait until it accepts TCP connections.

    ``bastion_toml`` is written to a ``-c`` config file for Bastion; ``mosquitto_conf`` is
    appended to the generated mosquitto.conf. ``setup`` adds credentials, ACL and a TLS
    listener. Bastion keeps its state in ``data_dir`` (default: a fresh directory under
    ``workdir``, unless the TOML has a ``[storage]`` table). Retries if a port was taken.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    last_error: BrokerStartError | None = None
    for attempt in range(3):
        port = free_port()
        tls_port = free_port() if setup.tls is not None else None
        if tls_port == port:
            continue
        stem = f"{name}-{port}-{attempt}"
        config: Path | None
        if USING_MOSQUITTO:
            config = workdir / f"{stem}.conf"
            config.write_text(_mosquitto_conf(port, tls_port, setup, mosquitto_conf))
            cmd: Sequence[str] = _mosquitto_command(config)
        else:
            toml = bastion_toml
            if setup.tls is not None and setup.tls.min_version is not None:
                assert tls_port is not None
                toml += _bastion_listeners_toml(port, tls_port, setup.tls)
            config = None
            if toml.strip():
                config = workdir / f"{stem}.toml"
                config.write_text(toml)
            state = data_dir
            if state is None and "[storage]" not in toml:
                state = workdir / f"{stem}-state"
            cmd = _bastion_command(port, tls_port, setup, config, state)
        try:
            return _launch(
                cmd,
                port=port,
                tls_port=tls_port,
                setup=setup,
                config=config,
                log_path=workdir / f"{stem}.log",
            )
        except BrokerStartError as exc:
            last_error = exc
            if "address already in use" not in str(exc).lower():
                break
    assert last_error is not None
    raise last_error


def _launch(
    cmd: Sequence[str],
    *,
    port: int,
    tls_port: int | None,
    setup: BrokerSetup,
    config: Path | None,
    log_path: Path,
) -> Broker:
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
    broker = Broker(
        BROKER_KIND, port, proc, log_path, config, log_file, tls_port=tls_port, setup=setup
    )
    _RUNNING.add(broker)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            broker.stop()
            raise BrokerStartError(
                f"{' '.join(cmd)} exited with {proc.returncode} before accepting connections\n"
                f"--- broker log ---\n{broker.log_tail()}"
            )
        if port_accepts(port) and (tls_port is None or port_accepts(tls_port)):
            return broker
        time.sleep(0.05)
    with contextlib.suppress(AssertionError):
        broker.stop(signal.SIGKILL, timeout=5)
    raise BrokerStartError(
        f"{' '.join(cmd)} did not accept connections on {HOST}:{port}"
        f"{'' if tls_port is None else f' and {tls_port}'} within {START_TIMEOUT}s\n"
        f"--- broker log ---\n{broker.log_tail()}"
    )
