"""What the demo shows while it runs: a live terminal view (rich), or plain log lines.

``run.py`` builds a ``ViewState`` a few times a second and reports notable events; a
``LiveView`` redraws tables in place when stdout is a terminal, a ``PlainView`` prints one
line per event and a status line every few seconds otherwise (headless, CI, pipes).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from bastion.demo.monitor import MonitorSnapshot

__all__ = [
    "AttackLine",
    "LiveView",
    "PlainView",
    "View",
    "ViewState",
    "printable",
    "status_line",
]

STATUS_EVERY: Final = 5.0  # seconds between the plain view's status lines
RECENT_EVENTS: Final = 10
# Control characters (C0, DEL, C1) shown as escapes: event texts quote client ids and topics,
# which an attacker chooses, and must not drive the terminal.
_CONTROLS: Final = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def printable(text: str) -> str:
    """``text`` with every control character written as an escape (``\\x1b``)."""
    return text.translate(_CONTROLS)


@dataclass(frozen=True, slots=True)
class AttackLine:
    """One attack attempt as the view shows it."""

    name: str
    control: str
    blocked: bool
    detail: str


@dataclass(frozen=True, slots=True)
class ViewState:
    """Everything the view shows, at one moment."""

    elapsed: float
    duration: float | None  # None: until Ctrl-C
    phase: str
    broker: str  # e.g. "mqtts://127.0.0.1:8883 (TLS 1.3)"
    state_dir: str
    monitor: MonitorSnapshot
    logged: int
    security: Mapping[str, int] = field(default_factory=dict)
    attacks: tuple[AttackLine, ...] = ()
    services: Mapping[str, str] = field(default_factory=dict)  # name -> running/stopped/...


class View(Protocol):
    """Where the demo's progress goes."""

    def start(self) -> None: ...
    def event(self, elapsed: float, text: str) -> None: ...
    def refresh(self, state: ViewState) -> None: ...
    def stop(self) -> None: ...


def status_line(state: ViewState) -> str:
    """One line: readings per sensor, alerts, logger, security events, attacks."""
    snap = state.monitor
    readings = " ".join(f"{s.topic}={s.count}" for s in snap.sensors)
    security = sum(state.security.values())
    text = (
        f"readings {readings} | alerts {snap.alerts} (offline {snap.offline_alerts}) | "
        f"logged {state.logged} | security events {security}"
    )
    if state.attacks:
        blocked = sum(1 for attack in state.attacks if attack.blocked)
        text += f" | attacks {blocked}/{len(state.attacks)} blocked"
    return text


class PlainView:
    """Plain lines on ``out``: ``[  12.3s] text``; a status line every ``STATUS_EVERY`` s."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out if out is not None else sys.stdout
        self._next_status = STATUS_EVERY

    def start(self) -> None:
        pass

    def event(self, elapsed: float, text: str) -> None:
        self._print(elapsed, printable(text))

    def refresh(self, state: ViewState) -> None:
        if state.elapsed >= self._next_status:
            self._next_status = state.elapsed + STATUS_EVERY
            self._print(state.elapsed, status_line(state))

    def stop(self) -> None:
        self._out.flush()

    def _print(self, elapsed: float, text: str) -> None:
        self._out.write(f"[{elapsed:6.1f}s] {text}\n")
        self._out.flush()


class LiveView:
    """Tables redrawn in place on a terminal (rich ``Live``); events scroll in a panel."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console if console is not None else Console()
        self._events: deque[Text] = deque(maxlen=RECENT_EVENTS)
        self._live: Live | None = None
        self._last: ViewState | None = None

    def start(self) -> None:
        self._live = Live(console=self._console, refresh_per_second=4, transient=False)
        self._live.start()

    def event(self, elapsed: float, text: str) -> None:
        style = "red" if ("offline" in text or "NOT BLOCKED" in text) else ""
        self._events.append(Text(f"{elapsed:6.1f}s  {printable(text)}", style=style))
        if self._last is not None:
            self.refresh(self._last)

    def refresh(self, state: ViewState) -> None:
        self._last = state
        if self._live is not None:
            self._live.update(self.render(state))

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def render(self, state: ViewState) -> Group:
        """The whole screen for ``state``."""
        parts: list[Panel | Table | Text] = [_header(state), _sensors(state.monitor)]
        parts.append(_alerts(state))
        parts.append(_security(state))
        if state.attacks:
            parts.append(_attacks(state.attacks))
        events = Text("\n").join(self._events) if self._events else Text("(nothing yet)")
        parts.append(Panel(events, title="recent events", title_align="left"))
        return Group(*parts)


def _header(state: ViewState) -> Panel:
    limit = "until Ctrl-C" if state.duration is None else f"of {state.duration:.0f}s"
    text = Text.assemble(
        ("Bastion demo", "bold"),
        f"  broker {state.broker}  state {state.state_dir}\n",
        f"{state.elapsed:5.1f}s {limit}  ",
        (state.phase, "cyan"),
        "  services: ",
        ", ".join(f"{name} {status}" for name, status in state.services.items()),
    )
    return Panel(text)


def _sensors(snap: MonitorSnapshot) -> Table:
    table = Table(title="readings (as the read-only viewer client sees them)", title_justify="left")
    for column in ("sensor", "topic", "readings", "last value", "status"):
        table.add_column(column, justify="right" if column == "readings" else "left")
    for sensor in snap.sensors:
        value = "-" if sensor.last_value is None else f"{sensor.last_value:g} {sensor.unit}"
        style = "red" if sensor.status == "offline" else ""
        table.add_row(
            sensor.device, sensor.topic, str(sensor.count), value, Text(sensor.status, style)
        )
    return table


def _alerts(state: ViewState) -> Table:
    snap = state.monitor
    table = Table(title="alerts, door lock and logger", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(snap.alerts_by_kind.items()))
    table.add_row("alerts", f"{snap.alerts}" + (f" ({kinds})" if kinds else ""))
    table.add_row(
        "offline alerts", Text(str(snap.offline_alerts), "red" if snap.offline_alerts else "")
    )
    for alert in snap.recent_alerts[-3:]:
        table.add_row("", f"{alert.kind} / {alert.device}: {alert.detail}")
    door = snap.door_results[-1] if snap.door_results else None
    door_text = "-" if door is None else f"{door.outcome}, {door.state} (QoS {door.qos})"
    table.add_row("door1", door_text)
    table.add_row("logger stored", str(state.logged))
    return table


def _security(state: ViewState) -> Table:
    table = Table(title="security events (audit log)", title_justify="left", min_width=40)
    table.add_column("kind")
    table.add_column("count", justify="right")
    if not state.security:
        table.add_row("(none)", "0")
    for kind, count in sorted(state.security.items()):
        table.add_row(kind, str(count))
    return table


def _attacks(attacks: tuple[AttackLine, ...]) -> Table:
    blocked = sum(1 for attack in attacks if attack.blocked)
    table = Table(title=f"attacks: {blocked}/{len(attacks)} blocked", title_justify="left")
    for column in ("attack", "control", "verdict", "detail"):
        table.add_column(column)
    for attack in attacks:
        verdict = Text("blocked", "green") if attack.blocked else Text("NOT BLOCKED", "bold red")
        table.add_row(attack.name, attack.control, verdict, printable(attack.detail[:70]))
    return table
