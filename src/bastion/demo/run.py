"""The orchestrator of ``bastion demo``: state directory, broker, services, view, clean stop.

Prepares the state directory (``statedir.py``, ``brokerconfig.py``), starts ``bastion
serve`` and the services as children (``processes.py``), watches the traffic as the
read-only viewer (``monitor.py``), unlocks the door once as the operator, SIGKILLs one
sensor at two thirds of the run so its will fires, optionally runs the attacker
(``attackrun.py``), shows it all (``view.py``) and ends with the summary (``summary.py``).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Final, TextIO

from bastion.demo.access import DOOR, KILLED_SENSOR, OPERATOR, SENSORS, VIEWER
from bastion.demo.brokerconfig import BrokerPlan, write_config
from bastion.demo.commands import broker_args, service_commands
from bastion.demo.errors import DemoError
from bastion.demo.logwatch import LogWatch
from bastion.demo.monitor import Monitor
from bastion.demo.operator import CommandSent, send_unlock
from bastion.demo.ports import connect_host, pick_port
from bastion.demo.processes import (
    Child,
    LogTail,
    bastion_command,
    record_children,
    stop_children,
    stop_leftovers,
)
from bastion.demo.statedir import PreparedState, StateLayout, prepare_state_dir
from bastion.demo.summary import (
    FlowReport,
    RunFacts,
    build_summary,
    mosquitto_sub_command,
    print_report,
    summary_json,
)
from bastion.demo.timeline import Schedule, flow_report
from bastion.demo.view import View, ViewState, printable, status_line
from bastion.errors import BastionError, ConfigError
from bastion.security.pkifiles import write_file
from bastion.services.netclient import Endpoint

if TYPE_CHECKING:
    from bastion.demo.attackrun import AttackRunner

__all__ = ["DEFAULT_DURATION", "DemoOptions", "run_demo"]

DEFAULT_DURATION: Final = 60.0
BROKER_START_TIMEOUT: Final = 30.0
READY_TIMEOUT: Final = 40.0
MONITOR_TIMEOUT: Final = 15.0
TICK: Final = 0.25
SERVICE_STOP_TIMEOUT: Final = 10.0
LOGGER_STOP_TIMEOUT: Final = 20.0
BROKER_STOP_TIMEOUT: Final = 15.0
ATTACK_GRACE: Final = 90.0  # the run waits this long past its end for the attacker
ATTACK_CANCEL_TIMEOUT: Final = 10.0


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``bastion demo`` was asked to do."""

    state_dir: Path
    duration: float | None = DEFAULT_DURATION  # None: until Ctrl-C
    attack: bool = False
    host: str = "127.0.0.1"
    port: int | None = None  # None: 8883, or a free port when 8883 is taken
    interval: float = 1.0
    key_file: Path | None = None


class _InterruptedError(Exception):
    """Ctrl-C or SIGTERM arrived while the demo was starting."""


@contextlib.contextmanager
def _signals(handler: Callable[[int], None]) -> Iterator[None]:
    """Route SIGINT/SIGTERM to ``handler`` (main thread only) and restore them after."""
    previous: dict[signal.Signals, object] = {}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        handler(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]


def run_demo(options: DemoOptions, view: View, out: TextIO | None = None) -> int:
    """Run the demo; the exit status (0 when everything worked and every attack was blocked).

    ``DemoError`` when it cannot start (a broken state directory, a taken port, a broker
    or service that exits at once); whatever was started is stopped first.
    """
    demo = _Demo(options, view, out if out is not None else sys.stdout)
    with _signals(demo.request_stop):
        try:
            return demo.run()
        finally:
            demo.shutdown()


class _Demo:
    """One run of the demo (see the module docstring for the story)."""

    def __init__(self, options: DemoOptions, view: View, out: TextIO) -> None:
        self.options = options
        self.view = view
        self.out = out
        self.host = connect_host(options.host)
        self.layout = StateLayout(options.state_dir)
        self.port = 0
        self.stop_requested = threading.Event()
        self.broker: Child | None = None
        self.services: dict[str, Child] = {}
        self.monitor: Monitor | None = None
        self.attacks: AttackRunner | None = None
        self.unlock_thread: threading.Thread | None = None
        self.door_commands: list[CommandSent] = []
        self.from_threads: deque[str] = deque()  # events of helper threads, shown by the loop
        self.logs = LogWatch(self.layout.log("broker"), self.layout.audit_log)
        self.errors: list[str] = []  # what makes the run fail (exit status 1)
        self.warnings: list[str] = []  # worth a look, but the run did its job
        self.reported_exit: set[str] = set()
        self.killed: dict[str, object] = {}
        self.live_start: float | None = None
        self.live_end: float | None = None
        self.phase = "starting"
        self.view_started = False
        self.shut_down = False
        self.prepared: PreparedState | None = None

    # -- the story -------------------------------------------------------------------------

    def request_stop(self, signum: int) -> None:
        self.stop_requested.set()

    def say(self, text: str) -> None:
        self.out.write(f"demo: {text}\n")
        self.out.flush()

    def run(self) -> int:
        prepared = self._prepare()
        try:
            self._start_broker()
            self._start_monitor(prepared)
            self._start_services()
            self._wait_ready()
            self._live(prepared)
        except _InterruptedError:
            self.say("interrupted while starting; stopping")
        self.shutdown()
        return self._finish(prepared)

    def _prepare(self) -> PreparedState:
        root = self.options.state_dir
        self.say(f"state directory {root}")
        prepared = prepare_state_dir(root, server_host=self.host)
        self.prepared = prepared
        for note in prepared.created:
            self.say(f"created {note}")
        for note in prepared.reused:
            self.say(f"reusing {note}")
        if not prepared.fresh:
            self.say(
                "reusing the keys and data of the earlier run (delete the directory for a new one)"
            )
        leftovers = stop_leftovers(self.layout.pids, str(self.layout.root))
        if leftovers:
            self.say(f"stopped what a killed earlier run left running: {', '.join(leftovers)}")
        port, port_note = pick_port(self.options.host, self.options.port)
        if port_note is not None:
            self.say(port_note)
        self.port = port
        write_config(self.layout, BrokerPlan(self.options.host, port, self.options.key_file))
        self.say(f"wrote the broker configuration {self.layout.config}")
        return prepared

    def _start_broker(self) -> None:
        log_path = self.layout.log("broker")
        argv = bastion_command(*broker_args(self.layout))
        self.broker = Child("broker", argv, log_path)
        self.broker.start()
        record_children(self.layout.pids, [self.broker])
        deadline = time.monotonic() + BROKER_START_TIMEOUT
        while time.monotonic() < deadline:
            self._check_interrupt()
            for record in self.logs.broker_records():
                if record.get("event") == "broker.started":
                    where = f"mqtts://{self.host}:{self.port}"
                    self.say(f"broker running (pid {self.broker.pid}) on {where}, TLS 1.3 only")
                    return
                if record.get("event") == "listener.failed":
                    address, error = record.get("address"), record.get("error")
                    raise DemoError(f"the broker cannot listen on {address}: {error}")
            if not self.broker.running():
                raise DemoError(self._exit_message(self.broker, "while starting"))
            time.sleep(0.05)
        raise DemoError(
            f"the broker did not start within {BROKER_START_TIMEOUT:g}s; see {log_path}"
        )

    def _endpoint(
        self, client: str, prepared: PreparedState, client_id: str | None = None
    ) -> Endpoint:
        return Endpoint(
            host=self.host,
            port=self.port,
            cafile=self.layout.ca_cert,
            username=client,
            password=prepared.passwords[client],
            client_id=client_id or client,
        )

    def _start_monitor(self, prepared: PreparedState) -> None:
        self.monitor = Monitor(self._endpoint(VIEWER, prepared), SENSORS)
        try:
            self.monitor.start(MONITOR_TIMEOUT)
        except BastionError as exc:
            raise DemoError(f"the demo's own viewer client cannot connect: {exc}") from None
        self.say(f"watching all topics as the read-only '{VIEWER}' client")

    def _start_services(self) -> None:
        commands = service_commands(
            self.layout,
            self.host,
            self.port,
            interval=self.options.interval,
            key_file=self.options.key_file,
        )
        for command in commands:
            name = command.name
            child = Child(name, bastion_command(*command.args), self.layout.log(name))
            self.services[name] = child
            self.logs.add_service(name, child.log_path)
            child.start()
        if self.broker is not None:
            record_children(self.layout.pids, [self.broker, *self.services.values()])
        names = ", ".join(f"{name} (pid {child.pid})" for name, child in self.services.items())
        self.say(f"started {names}")

    def _wait_ready(self) -> None:
        assert self.monitor is not None
        since = time.monotonic()
        deadline = since + READY_TIMEOUT
        missing: list[str] = []
        while time.monotonic() < deadline:
            self._check_interrupt()
            for child in self.services.values():
                if not child.running():
                    raise DemoError(self._exit_message(child, "while starting"))
            missing = self._not_ready(since)
            if not missing:
                self.say(f"every service is up after {time.monotonic() - since:.1f}s")
                return
            self._poll_quietly()
            time.sleep(0.1)
        self.errors.append(f"not up after {READY_TIMEOUT:g}s: {', '.join(missing)}")
        self.say(
            f"warning: still waiting for {', '.join(missing)}; see {self.layout.logs}; going on"
        )

    def _not_ready(self, since: float) -> list[str]:
        """Devices not online yet, and periodic sensors without a reading (motion is bursty)."""
        assert self.monitor is not None
        statuses = self.monitor.snapshot().statuses
        missing = [
            name for name in (*(s.name for s in SENSORS), DOOR) if statuses.get(name) != "online"
        ]
        for sensor in SENSORS:
            periodic = not sensor.topic.startswith("motion/")
            if periodic and not self.monitor.first_reading_after(sensor.topic, since):
                missing.append(sensor.name)
        return sorted(set(missing))

    def _poll_quietly(self) -> None:
        """Before the view runs: what the logs and the monitor saw, as ``demo:`` lines."""
        self._read_logs()
        if self.monitor is not None:
            for text in self.monitor.drain_events():
                self._event(text)

    def _check_interrupt(self) -> None:
        if self.stop_requested.is_set():
            raise _InterruptedError

    def _exit_message(self, child: Child, when: str) -> str:
        lines = [line for line in LogTail(child.log_path).text_lines(40) if line.strip()]
        errors = [line for line in lines if "error" in line.lower()]
        last = (errors or lines or ["(its log is empty)"])[-1]
        code = child.exit_code
        return f"{child.name} exited with code {code} {when}: {last[:300]} (log: {child.log_path})"

    # -- the live phase --------------------------------------------------------------------

    def _live(self, prepared: PreparedState) -> None:
        schedule = Schedule.plan(time.monotonic(), self.options.duration, self.options.attack)
        self.live_start = schedule.start
        if self.options.attack:
            self.attacks = self._attack_runner(prepared)
        self.say(f"watch it yourself: {mosquitto_sub_command(self.layout, self.host, self.port)}")
        self.say(self._plan_text(schedule))
        self.view.start()
        self.view_started = True
        self.phase = "running"
        try:
            while not self.stop_requested.is_set():
                now = time.monotonic()
                self._scripted_moments(now, schedule, prepared)
                self._poll(now)
                if self.broker is not None and not self.broker.running():
                    break
                if schedule.end is not None and now >= schedule.end:
                    if (
                        self.attacks is None
                        or self.attacks.done
                        or now >= schedule.end + ATTACK_GRACE
                    ):
                        break
                    self.phase = "waiting for the attacker to finish"
                time.sleep(TICK)
        finally:
            self.live_end = time.monotonic()

    def _plan_text(self, schedule: Schedule) -> str:
        length = (
            "until Ctrl-C" if schedule.end is None else f"for {schedule.end - schedule.start:.0f}s"
        )
        text = (
            f"running {length}: unlock {DOOR} at {schedule.unlock_at - schedule.start:.0f}s, "
            f"SIGKILL {KILLED_SENSOR} at {schedule.kill_at - schedule.start:.0f}s"
        )
        if schedule.attack_at is not None:
            text += f", attacks from {schedule.attack_at - schedule.start:.0f}s"
        return text

    def _attack_runner(self, prepared: PreparedState) -> AttackRunner:
        try:
            from bastion.demo.attackrun import AttackRunner  # noqa: PLC0415 - only with --attack
        except ImportError as exc:
            raise DemoError(f"--attack is not available: {exc}") from None
        return AttackRunner(
            host=self.host,
            tls_port=self.port,
            cafile=self.layout.ca_cert,
            state_dir=self.layout.root,
            credentials=prepared.passwords,
        )

    def _elapsed(self, now: float | None = None) -> float:
        start = self.live_start
        return 0.0 if start is None else (time.monotonic() if now is None else now) - start

    def _event(self, text: str) -> None:
        if self.view_started:
            self.view.event(self._elapsed(), text)
        else:
            self.say(printable(text))

    def _scripted_moments(self, now: float, schedule: Schedule, prepared: PreparedState) -> None:
        attacks = self.attacks
        if attacks is not None and schedule.attack_at is not None and now >= schedule.attack_at:
            if attacks.started_at is None:
                attacks.start()
                self.phase = "under attack"
                self._event("the attacker starts (the sensors keep publishing)")
            elif attacks.done and self.phase == "under attack":
                self.phase = "running"
                self._event("the attacker is done")
        if self.unlock_thread is None and now >= schedule.unlock_at:
            endpoint = self._endpoint(OPERATOR, prepared)
            self.unlock_thread = threading.Thread(
                target=self._unlock, args=(endpoint,), name="demo-unlock", daemon=True
            )
            self.unlock_thread.start()
        if not self.killed and now >= schedule.kill_at:
            self._kill_sensor()

    def _unlock(self, endpoint: Endpoint) -> None:
        """The operator's command (on a helper thread: it waits for the QoS 2 handshake)."""
        self.from_threads.append(f"{OPERATOR} sends 'unlock' to cmd/{DOOR} at QoS 2")
        sent = send_unlock(endpoint, DOOR, OPERATOR)
        self.door_commands.append(sent)
        if sent.completed:
            self.from_threads.append(f"unlock {sent.request_id}: QoS 2 flow complete (PUBCOMP)")
        else:
            self.errors.append(f"the unlock command failed: {sent.error}")
            self.from_threads.append(f"unlock failed: {sent.error}")

    def _kill_sensor(self) -> None:
        child = self.services.get(KILLED_SENSOR)
        if child is None or not child.running():
            self.killed = {"device": KILLED_SENSOR, "at_s": None, "note": "was not running"}
            return
        pid = child.pid
        child.kill()
        self.killed = {"device": KILLED_SENSOR, "pid": pid, "at_s": round(self._elapsed(), 1)}
        self._event(
            f"SIGKILL {KILLED_SENSOR} (pid {pid}): no DISCONNECT, so the broker publishes its "
            "will (status offline)"
        )

    # -- watching --------------------------------------------------------------------------

    def _poll(self, now: float) -> None:
        while self.from_threads:
            self._event(self.from_threads.popleft())
        self._read_logs()
        if self.monitor is not None:
            for text in self.monitor.drain_events():
                self._event(text)
        if self.attacks is not None:
            for line in self.attacks.fresh():
                verdict = f"blocked by {line.control}" if line.blocked else "NOT BLOCKED"
                self._event(f"attack '{line.name}': {verdict} ({line.detail})")
        self._check_children()
        if self.view_started and self.monitor is not None:
            self.view.refresh(self._view_state(now))

    def _read_logs(self) -> None:
        seen = self.logs.read()
        self.warnings += seen.warnings
        for text in seen.events:
            self._event(text)

    def _children(self) -> list[Child]:
        children = list(self.services.values())
        if self.broker is not None:
            children.append(self.broker)
        return children

    def _check_children(self) -> None:
        for child in self._children():
            if child.killed or child.name in self.reported_exit or child.running():
                continue
            if child.exit_code is None:
                continue
            self.reported_exit.add(child.name)
            message = self._exit_message(child, "unexpectedly")
            self.errors.append(message)
            self._event(message)

    def _view_state(self, now: float) -> ViewState:
        assert self.monitor is not None
        return ViewState(
            elapsed=self._elapsed(now),
            duration=self.options.duration,
            phase=self.phase,
            broker=f"mqtts://{self.host}:{self.port} (TLS 1.3)",
            state_dir=str(self.layout.root),
            monitor=self.monitor.snapshot(),
            logged=self.logs.logged,
            security=dict(self.logs.security),
            attacks=tuple(self.attacks.results()) if self.attacks is not None else (),
            services={name: self._service_state(child) for name, child in self.services.items()},
        )

    @staticmethod
    def _service_state(child: Child) -> str:
        if child.killed:
            return "killed"
        if child.running():
            return "up"
        return "stopped" if child.exit_code == 0 else f"exit {child.exit_code}"

    # -- the end ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop everything this run started, in order; safe to call more than once."""
        if self.shut_down:
            return
        self.shut_down = True
        self.phase = "stopping"
        if self.view_started and self.monitor is not None:
            self.view.refresh(self._view_state(time.monotonic()))
        if self.attacks is not None:
            self.attacks.cancel(ATTACK_CANCEL_TIMEOUT)
        if self.unlock_thread is not None:
            self.unlock_thread.join(SERVICE_STOP_TIMEOUT + 5.0)
        # The alert service first (else the sensors' goodbyes would raise offline alerts),
        # then the devices, then the logger, so it stores everything up to the end.
        groups: list[tuple[list[str], float]] = [
            (["alerts"], SERVICE_STOP_TIMEOUT),
            ([*(s.name for s in SENSORS), DOOR], SERVICE_STOP_TIMEOUT),
            (["logger"], LOGGER_STOP_TIMEOUT),
        ]
        for names, timeout in groups:
            children = [self.services[n] for n in names if n in self.services]
            for child in stop_children(children, timeout):
                self.errors.append(f"{child.name} ignored SIGTERM for {timeout:g}s and was killed")
        self._read_logs()
        if self.monitor is not None:
            for text in self.monitor.drain_events():
                self._event(text)
            self.monitor.stop()
        if self.broker is not None and stop_children([self.broker], BROKER_STOP_TIMEOUT):
            self.errors.append(
                f"the broker ignored SIGTERM for {BROKER_STOP_TIMEOUT:g}s and was killed"
            )
        self._read_logs()
        if self.view_started:
            self.view.stop()
        children = self._children()
        if children and all(child.exit_code is not None for child in children):
            with contextlib.suppress(OSError):
                self.layout.pids.unlink(missing_ok=True)
        if self.prepared is not None:
            self.prepared.release()

    def _finish(self, prepared: PreparedState) -> int:
        if self.monitor is None:
            return 1
        attacks = self.attacks.results() if self.attacks is not None else []
        if self.attacks is not None and self.attacks.error is not None:
            self.errors.append(self.attacks.error)
        self.errors += [
            f"attack '{a.name}' was not blocked: {a.detail}" for a in attacks if not a.blocked
        ]
        facts = RunFacts(
            layout=self.layout,
            host=self.host,
            port=self.port,
            duration_s=self._live_seconds(),
            reused_state=not prepared.fresh,
            logged=self.logs.logged,
            security_events=dict(self.logs.security),
            attacks=attacks,
            attacked=self.options.attack,
            flow=self._flow(),
            killed=self.killed,
            door_commands=[
                {"request_id": c.request_id, "completed": c.completed, "error": c.error}
                for c in self.door_commands
            ],
            services={name: self._service_state(child) for name, child in self.services.items()},
            errors=self.errors,
            warnings=self.warnings,
            interrupted=self.stop_requested.is_set(),
        )
        summary = build_summary(self.monitor.snapshot(), facts)
        summary_file = self.layout.root / "summary.json"
        try:
            write_file(summary_file, (summary_json(summary) + "\n").encode(), 0o600, replace=True)
        except ConfigError as exc:
            self.say(f"cannot keep the summary: {exc}")
        print_report(self.out, facts, summary, status_line(self._view_state(time.monotonic())))
        return 1 if self.errors else 0

    def _live_seconds(self) -> float:
        if self.live_start is None:
            return 0.0
        return (self.live_end or time.monotonic()) - self.live_start

    def _flow(self) -> FlowReport | None:
        runner, monitor, start = self.attacks, self.monitor, self.live_start
        if runner is None or monitor is None or runner.started_at is None or start is None:
            return None
        stopped: dict[str, float] = {}
        at = self.killed.get("at_s")
        if isinstance(at, float | int):
            stopped[KILLED_SENSOR] = start + float(at)
        return flow_report(
            monitor,
            SENSORS,
            live_start=start,
            attack_start=runner.started_at,
            attack_end=runner.ended_at or self.live_end or time.monotonic(),
            stopped=stopped,
        )
