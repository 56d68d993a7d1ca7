"""09 the demo's scripted attacker (``bastion demo --attack``) against a real broker configured
exactly as the demo configures it (``demo/statedir.py`` and ``demo/brokerconfig.py``), while a
real ``bastion sensor`` keeps publishing: every attack is blocked, the sensor's readings keep
arriving, and nothing the attacker provoked (back-off, bans) reaches the demo's own clients.

Then the same attacker against deliberately weakened settings, and a TLS 1.0 server, to show
that its verdicts come from what it observes: the attacks those weaknesses let through are
reported unblocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import pytest

from bastion.demo.attacks import ATTACK_NAMES, AttackResult, AttackTarget, run_attacks
from bastion.demo.attacks_base import AttackContext, SourceAddresses
from bastion.demo.attacks_entry import tls_1_0_handshake
from bastion.demo.brokerconfig import (
    BURST_MESSAGES,
    MESSAGES_PER_SECOND,
    BrokerPlan,
    config_text,
    write_config,
)
from bastion.demo.statedir import PreparedState, StateLayout, prepare_state_dir
from support.brokerproc import HOST, bastion_cli, bastion_only, free_port, port_accepts
from support.pahoclient import PahoClient

from .tlsclients import openssl_server, require_control

pytestmark = [pytest.mark.security, bastion_only("the demo runs Bastion with its own TOML")]

START_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 10.0
SENSOR_INTERVAL: Final = 0.5
MAX_READING_GAP: Final = 5.0  # seconds without a sensor1 reading, under attack, on a busy CI box
ATTACKS_WALL_TIME: Final = 45.0  # the whole list ("well under ~40 s" on a quiet machine)
WEAKENED_ATTACKS: Final = frozenset(
    {"anonymous connect", "client id takeover", "message flood", "QoS 2 redelivery trap"}
)


# ----------------------------------------------------------------- processes


@dataclass(eq=False)
class Process:
    """A child this test started (broker or sensor); stopped by PID, output in ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    _out: IO[bytes] | None = field(default=None, repr=False)

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text("utf-8", "replace")[-20_000:]
        except OSError as exc:
            return f"<log unavailable: {exc}>"

    def stop(self) -> int:
        """SIGTERM, bounded wait (SIGKILL if it hangs); the exit status."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    return self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(STOP_TIMEOUT)
                    return -9
            return self.proc.returncode
        finally:
            if self._out is not None:
                self._out.close()
                self._out = None


def _spawn(name: str, args: list[str], log: Path) -> Process:
    out = log.open("wb")
    proc = subprocess.Popen(
        [*bastion_cli(), *args],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        start_new_session=True,
    )
    return Process(name, proc, log, out)


@dataclass
class Demo:
    """The broker of a demo state directory, as ``bastion demo`` would run it."""

    state: PreparedState
    port: int
    broker: Process
    children: list[Process] = field(default_factory=list)

    @property
    def layout(self) -> StateLayout:
        return self.state.layout

    def target(self) -> AttackTarget:
        return AttackTarget(
            host=HOST,
            tls_port=self.port,
            cafile=self.layout.ca_cert,
            state_dir=self.layout.root,
            credentials=self.state.passwords,
        )

    def client(self, user: str, client_id: str | None = None) -> PahoClient:
        """A verifying TLS client of the demo, from 127.0.0.1 like the demo's services."""
        return PahoClient(
            HOST,
            self.port,
            client_id=client_id or user,
            username=user,
            password=self.state.passwords[user],
            tls=ssl.create_default_context(cafile=self.layout.ca_cert),
        )

    def start_sensor(self, name: str) -> Process:
        """The real ``bastion sensor NAME``, as the demo starts it."""
        args = ["sensor", name, "--interval", f"{SENSOR_INTERVAL:g}", "--host", HOST]
        args += ["--port", str(self.port), "--cafile", str(self.layout.ca_cert)]
        args += ["--username", name, "--password-file", str(self.layout.credential(name))]
        args += ["--client-id", name, "--log-format", "json"]
        sensor = _spawn(name, args, self.layout.root / f"{name}.test.log")
        self.children.append(sensor)
        return sensor


def _start_demo_broker(state: PreparedState, text: str | None) -> Demo:
    """Write the demo's ``bastion.toml`` (or ``text`` instead) and run ``bastion serve``."""
    layout = state.layout
    for _ in range(3):
        port = free_port()
        if text is None:
            write_config(layout, BrokerPlan(HOST, port))
        else:
            layout.config.write_text(text.replace("@PORT@", str(port)))
            layout.config.chmod(0o600)
        broker = _spawn("broker", ["serve", "-c", str(layout.config)], layout.root / "broker.log")
        deadline = time.monotonic() + START_TIMEOUT
        while broker.running() and time.monotonic() < deadline:
            if port_accepts(port):
                return Demo(state, port, broker)
            time.sleep(0.05)
        broker.stop()
        if "address already in use" not in broker.log_text().lower():
            pytest.fail(f"the demo broker did not start:\n{broker.log_text()}", pytrace=False)
    pytest.fail("no free port for the demo broker after 3 tries", pytrace=False)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[PreparedState]:
    prepared = prepare_state_dir(tmp_path / "demo")
    yield prepared
    prepared.release()  # the directory's lock file


def _stop_all(demo: Demo) -> None:
    for child in demo.children:
        child.stop()
    code = demo.broker.stop()
    assert code == 0, f"the broker exited with {code}\n{demo.broker.log_text()}"


@pytest.fixture
def demo(state: PreparedState) -> Iterator[Demo]:
    """The demo's own broker configuration, unchanged."""
    started = _start_demo_broker(state, None)
    yield started
    _stop_all(started)


def _weakened(state: PreparedState) -> str:
    """The demo's configuration with four defences turned off (the port left as @PORT@)."""
    text = config_text(state.layout, BrokerPlan(HOST, 1))
    changes = {
        "port = 1\n": "port = @PORT@\n",
        "allow_anonymous = false": "allow_anonymous = true",
        'client_id_patterns = ["%u", "%u-*"]': "client_id_patterns = []",
        "max_delivery_attempts = 3": "max_delivery_attempts = 0",
        f"messages_per_second = {MESSAGES_PER_SECOND}": "messages_per_second = 100000.0",
        f"burst_messages = {BURST_MESSAGES}": "burst_messages = 100000.0",
        'action = "disconnect"': 'action = "throttle"',
    }
    for old, new in changes.items():
        assert text.count(old) == 1, f"the demo's bastion.toml no longer has {old!r}:\n{text}"
        text = text.replace(old, new)
    return text


@pytest.fixture
def weak_demo(state: PreparedState) -> Iterator[Demo]:
    started = _start_demo_broker(state, _weakened(state))
    yield started
    _stop_all(started)


# ----------------------------------------------------------------- watching the bystander


class Readings:
    """Arrival times of sensor1's readings at a dashboard-like subscriber (``temp/sensor1``)."""

    def __init__(self, subscriber: PahoClient) -> None:
        self.subscriber = subscriber
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.subscriber.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            if b'"unit"' in message.payload:  # a reading, not the attacker's junk
                self.times.append(time.monotonic())

    def wait_first(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.times:
            assert time.monotonic() < deadline, "sensor1 published nothing"
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def between(self, start: float, end: float) -> list[float]:
        return [t for t in self.times if start <= t <= end]

    def largest_gap(self, start: float, end: float) -> float:
        points = [start, *self.between(start, end), end]
        return max(b - a for a, b in itertools.pairwise(points))


def _attack(target: AttackTarget) -> tuple[list[AttackResult], list[AttackResult], float]:
    """Run the whole list; (returned results, reported results, seconds)."""
    reported: list[AttackResult] = []
    started = time.monotonic()
    results = asyncio.run(run_attacks(target, reported.append))
    return results, reported, time.monotonic() - started


def _table(results: list[AttackResult]) -> str:
    return "\n".join(
        f"  {'blocked' if r.blocked else 'THROUGH'} [{r.control}] {r.name}: {r.detail}"
        for r in results
    )


# ----------------------------------------------------------------- the tests


def test_every_attack_is_blocked_while_the_sensor_keeps_publishing(demo: Demo) -> None:
    sensor = demo.start_sensor("sensor1")
    dashboard = demo.client("dashboard")
    dashboard.connect()
    assert dashboard.subscribe("temp/sensor1", 0) == [0]
    readings = Readings(dashboard)
    try:
        readings.wait_first()
        started = time.monotonic()
        results, reported, elapsed = _attack(demo.target())
        ended = time.monotonic()
        time.sleep(2 * SENSOR_INTERVAL)  # readings still come after the last attack
        after = len(readings.between(ended, time.monotonic()))
    finally:
        readings.stop()

    table = _table(results)
    assert [r.name for r in results] == list(ATTACK_NAMES), table
    assert reported == results, "report() must see each result, in order, as it is returned"
    through = [r.name for r in results if not r.blocked]
    assert not through, f"attacks got through: {through}\n{table}"
    assert elapsed < ATTACKS_WALL_TIME, f"the attacks took {elapsed:.1f} s\n{table}"

    by_name = {r.name: r for r in results}
    assert by_name["TLS 1.0 handshake"].control == "TLS 1.3 minimum", table
    assert "0x8A" in by_name["password brute force"].detail, table
    assert "0x95" in by_name["oversized packet"].detail, table
    assert "0x96" in by_name["message flood"].detail, table
    assert "0x85" in by_name["client id takeover"].detail, table
    assert "kept arriving" in by_name["client id takeover"].detail, table
    assert "delivered 3 times" in by_name["QoS 2 redelivery trap"].detail, table

    # The bystander never noticed: still connected, publishing throughout, on time.
    assert sensor.running(), f"sensor1 exited\n{sensor.log_text()}"
    assert dashboard.is_connected() and dashboard.disconnected_info() is None
    during = readings.between(started, ended)
    assert len(during) >= (ended - started) / SENSOR_INTERVAL / 2, (len(during), table)
    gap = readings.largest_gap(started, ended)
    assert gap < MAX_READING_GAP, f"sensor1 went quiet for {gap:.1f} s under attack\n{table}"
    assert after >= 1, "sensor1's readings stopped after the attacks"
    # No back-off or ban reached the demo's own address: a new login is answered at once.
    newcomer = demo.client("viewer", "viewer-after-attacks")
    login = time.monotonic()
    assert newcomer.connect().reason_code == 0
    assert time.monotonic() - login < 3.0, "a login from 127.0.0.1 was held back"
    newcomer.disconnect()
    dashboard.disconnect()


def test_weakened_settings_let_those_attacks_through(weak_demo: Demo) -> None:
    """allow_anonymous, no client id binding, unbounded redelivery and a budget as big as the
    flood: exactly those four attacks are reported unblocked, the rest still blocked."""
    weak_demo.start_sensor("sensor1")
    watcher = weak_demo.client("dashboard")
    watcher.connect()
    watcher.subscribe("temp/sensor1", 0)
    readings = Readings(watcher)
    try:
        readings.wait_first()
        results, _, _ = _attack(weak_demo.target())
    finally:
        readings.stop()
        with contextlib.suppress(AssertionError):
            watcher.disconnect()
    table = _table(results)
    through = {r.name for r in results if not r.blocked}
    assert through == WEAKENED_ATTACKS, table
    by_name = {r.name: r for r in results}
    assert "0x00" in by_name["anonymous connect"].detail, table
    assert "pushed off" in by_name["client id takeover"].detail, table
    assert "no bound" in by_name["QoS 2 redelivery trap"].detail, table
    assert "allows it all" in by_name["message flood"].detail, table


def test_a_server_that_speaks_tls_1_0_is_reported(state: PreparedState) -> None:
    """The TLS probe is real: against ``openssl s_server -tls1`` it sees a TLS 1.0 ServerHello
    and reports the attack unblocked."""
    layout = state.layout
    with openssl_server(layout.server_cert, layout.server_key, ssl.TLSVersion.TLSv1) as port:
        target = AttackTarget(HOST, port, layout.ca_cert, layout.root, state.passwords)
        context = AttackContext(target, ssl.create_default_context(), SourceAddresses(HOST), None)
        result = asyncio.run(tls_1_0_handshake(context))
    require_control(
        "ServerHello" in result.detail, f"openssl s_server -tls1 refused TLS 1.0: {result}"
    )
    assert not result.blocked, result
    assert "ServerHello TLS 1.0" in result.detail
