"""The brokers under test: equivalent configurations, TLS/password/ACL files, start and stop.

``BrokerSetup`` says what a run needs beyond the shared ``[mqtt]`` settings (TLS 1.3, password
file and ACL, Bastion's default or relaxed ``[limits]``, persistence in a fresh data directory);
``bastion_toml`` and ``mosquitto_conf`` render it for each broker. ``Materials`` makes the dev
PKI (``bastion pki init``), the password file (``mosquitto_passwd``: ``$7$`` hashes, which both
brokers read) and the ACL file (Mosquitto syntax, which both read) once per benchmark run, in
a scratch directory. ``start_broker`` starts a broker on a free loopback port, optionally
Bastion under cProfile; ``BrokerProc.stop`` signals only that process. Used by
``benchmarks/run.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from loadgen import HOST

START_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 10.0
PROFILE_STOP_TIMEOUT: Final = 60.0  # cProfile writes its statistics on the way out
BROKERS: Final = ("bastion", "mosquitto")

RELAXED_NOTE: Final = (
    "Unless a scenario says otherwise, Bastion runs with allow_anonymous = true and its "
    "per-client publish budget and per-IP connection limits raised to effectively unlimited "
    "([limits] in the generated TOML) so its rate limiter does not cap the benchmark; "
    "Mosquitto has no such limits. Both: max_inflight_messages 32, max_queued_messages 1000, "
    "max_queued_bytes 16 MiB, max_packet_size 1 MiB, no persistence (Bastion: [storage] "
    "enabled = false; Mosquitto: persistence false) except in qos1_durable. Mosquitto keeps "
    "its default set_tcp_nodelay false (Nagle on); Bastion's transports set TCP_NODELAY. For "
    "ms, s and KiB rows lower is better."
)

BASTION_MQTT: Final = """\
[mqtt]
max_inflight_messages = 32
max_queued_messages = 1000
max_queued_bytes = 16777216
max_packet_size = 1048576
"""

BASTION_RELAXED_LIMITS: Final = """\
[limits]
client = { messages_per_second = 1e9, burst_messages = 1e9, bytes_per_second = 1e12, \
burst_bytes = 1e12 }
connections_per_second_per_ip = 1e6
connection_burst_per_ip = 1e6
max_connections_per_ip = 100000
flap_connects_per_client = 1000000
flap_connects_per_ip = 1000000
"""

BASTION_NO_STORAGE: Final = """\
[storage]
enabled = false
"""

# persistence on, with the defaults of sync ("full") and group commit; the master key is
# created in the data directory on the first start (Bastion warns that it belongs elsewhere)
BASTION_STORAGE: Final = """\
[storage]
enabled = true
data_dir = {data_dir}
"""

BASTION_LOGGING: Final = """\
[logging]
level = "warning"
format = "json"
"""

MOSQUITTO_COMMON: Final = """\
max_connections -1
max_inflight_messages 32
max_queued_messages 1000
max_queued_bytes 16777216
max_packet_size 1048576
log_dest stderr
log_type error
log_type warning
"""

# ---------------------------------------------------------------------------------- configs


@dataclass(frozen=True, slots=True)
class BrokerSetup:
    """What a broker run needs beyond the shared [mqtt] settings."""

    tls: bool = False  # a TLS 1.3 listener with the dev PKI's server certificate
    auth: bool = False  # password file and ACL file; anonymous clients refused
    default_limits: bool = False  # Bastion keeps its default [limits] (else relaxed)
    persistence: bool = False  # Bastion [storage] on, Mosquitto persistence true; fresh dir


@dataclass(slots=True)
class Materials:
    """TLS and authentication files, made on first use under ``root`` (a scratch directory)."""

    root: Path
    users: dict[str, str] | None = None  # username -> password, once written
    acl_text: str | None = None

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def password_file(self) -> Path:
        return self.root / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.root / "acl"

    def ensure_pki(self) -> None:
        """``bastion pki init``: CA plus an ECDSA P-256 server certificate for 127.0.0.1."""
        if (self.pki / "server.key").exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "bastion", "pki", "init", str(self.pki)],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def ensure_auth(self, users: dict[str, str], acl_text: str) -> None:
        """Write the password file (hashed by ``mosquitto_passwd -U``) and the ACL file."""
        if self.users == users and self.acl_text == acl_text:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        plain = "".join(f"{user}:{password}\n" for user, password in users.items())
        self.password_file.write_text(plain)
        self.password_file.chmod(0o600)
        subprocess.run(
            [tool("mosquitto_passwd"), "-U", str(self.password_file)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.acl_file.write_text(acl_text)
        self.users, self.acl_text = dict(users), acl_text


def _q(path: Path) -> str:
    """A TOML basic string (JSON's escaping is valid TOML for these paths)."""
    return json.dumps(str(path))


def bastion_toml(
    port: int, setup: BrokerSetup, materials: Materials, data_dir: Path | None = None
) -> str:
    """``data_dir``: where the database goes when ``setup.persistence`` (required then)."""
    listener = f'[[listeners]]\nhost = "{HOST}"\nport = {port}\n'
    if setup.tls:
        listener += (
            f"\n[listeners.tls]\ncertfile = {_q(materials.pki / 'server.crt')}\n"
            f'keyfile = {_q(materials.pki / "server.key")}\nmin_version = "1.3"\n'
        )
    if setup.auth:
        security = (
            f"[security]\nallow_anonymous = false\npassword_file = "
            f"{_q(materials.password_file)}\nacl_file = {_q(materials.acl_file)}\n"
        )
    else:
        security = "[security]\nallow_anonymous = true\n"
    limits = "" if setup.default_limits else BASTION_RELAXED_LIMITS + "\n"
    if setup.persistence:
        if data_dir is None:
            raise ValueError("persistence needs a data directory")
        storage = BASTION_STORAGE.format(data_dir=_q(data_dir))
    else:
        storage = BASTION_NO_STORAGE
    return (
        "\n".join((listener, security, BASTION_MQTT))
        + "\n"
        + limits
        + storage
        + "\n"
        + BASTION_LOGGING
    )


def mosquitto_conf(
    port: int, setup: BrokerSetup, materials: Materials, data_dir: Path | None = None
) -> str:
    """``data_dir``: where mosquitto.db goes when ``setup.persistence`` (required then).
    Mosquitto keeps its default autosave_interval (1800 s): it writes the database then and
    at exit, not per message."""
    lines = [f"listener {port} {HOST}"]
    if setup.tls:
        lines += [
            f"certfile {materials.pki / 'server.crt'}",
            f"keyfile {materials.pki / 'server.key'}",
            "tls_version tlsv1.3",
        ]
    if setup.auth:
        lines += [
            "allow_anonymous false",
            f"password_file {materials.password_file}",
            f"acl_file {materials.acl_file}",
        ]
    else:
        lines.append("allow_anonymous true")
    if setup.persistence:
        if data_dir is None:
            raise ValueError("persistence needs a data directory")
        lines += ["persistence true", f"persistence_location {data_dir}/"]
    else:
        lines.append("persistence false")
    if os.geteuid() == 0:
        lines.append("user root")
    return "\n".join(lines) + "\n" + MOSQUITTO_COMMON


# ---------------------------------------------------------------------------------- process


@dataclass(eq=False, slots=True)
class BrokerProc:
    """A broker process this script started; only it is ever signalled."""

    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    profile: Path | None = None  # cProfile output, written when Bastion exits
    data_dir: Path | None = None  # persistence: this start's own, fresh data directory

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, limit: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text("utf-8", "replace")[-limit:]
        return "<no log>"

    def stop(self) -> int | None:
        """SIGTERM (then SIGKILL after a timeout) to this process only; its exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(PROFILE_STOP_TIMEOUT if self.profile else STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            self.log_file.close()
        return self.proc.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def tool(name: str) -> str:
    """Path of one of Debian's mosquitto package's programs."""
    exe = shutil.which(name) or f"/usr/sbin/{name}"
    if not Path(exe).exists():
        raise SystemExit(f"{name} is not installed (apt-get install mosquitto)")
    return exe


def mosquitto_exe() -> str:
    return tool("mosquitto")


def start_broker(
    kind: str,
    workdir: Path,
    *,
    broker_cpus: set[int] | None,
    setup: BrokerSetup,
    materials: Materials,
    profile: Path | None = None,
) -> BrokerProc:
    """Start a fresh broker on a free port and wait until it accepts TCP connections.

    ``profile``: run Bastion under ``python -m cProfile -o PROFILE``. ``setup.persistence``:
    the broker gets a new, empty data directory under ``workdir`` (mode 0700), never one of an
    earlier start. The broker inherits this process's RLIMIT_NOFILE (raised to the hard limit
    by ``run.py``)."""
    port = free_port()
    if setup.tls:
        materials.ensure_pki()
    data_dir = None
    if setup.persistence:
        data_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-{port}-data-", dir=workdir))
    if kind == "bastion":
        config = workdir / f"bastion-{port}.toml"
        config.write_text(bastion_toml(port, setup, materials, data_dir))
        prefix = ["-m", "cProfile", "-o", str(profile)] if profile else []
        cmd = [sys.executable, *prefix, "-m", "bastion", "serve", "-c", str(config)]
    else:
        config = workdir / f"mosquitto-{port}.conf"
        config.write_text(mosquitto_conf(port, setup, materials, data_dir))
        cmd = [mosquitto_exe(), "-c", str(config)]
        profile = None
    log_path = workdir / f"{kind}-{port}.log"
    log_file = log_path.open("wb")
    own = os.sched_getaffinity(0)
    if broker_cpus:  # the child inherits the CPU set in effect when it is forked
        os.sched_setaffinity(0, broker_cpus)
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        os.sched_setaffinity(0, own)
    broker = BrokerProc(kind, port, proc, log_path, log_file, profile, data_dir)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            broker.stop()
            raise RuntimeError(f"{kind} exited with {proc.returncode}:\n{broker.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
            return broker  # a bare TCP connect: no TLS handshake is attempted, none fails
        time.sleep(0.05)
    broker.stop()
    raise RuntimeError(f"{kind} did not accept connections within {START_TIMEOUT}s")


# ---------------------------------------------------------------------------------- /proc


def vm_rss_kib(pid: int) -> int:
    """Resident set size of a process (VmRSS of /proc/<pid>/status), in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def dir_size(path: Path) -> int:
    """Bytes in the regular files under ``path`` (0 if it is gone)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
    return total


def open_files_limit(pid: int) -> int:
    """Soft 'Max open files' of a process, from /proc/<pid>/limits (-1: unlimited)."""
    with open(f"/proc/{pid}/limits", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("Max open files"):
                soft = line.split()[3]
                return -1 if soft == "unlimited" else int(soft)
    return -1
