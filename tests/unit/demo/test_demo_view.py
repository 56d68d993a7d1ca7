"""What the demo shows (``demo/view.py``): plain lines for pipes, rich tables for terminals."""

from __future__ import annotations

import io

from rich.console import Console

from bastion.demo.monitor import AlertSeen, DoorResult, MonitorSnapshot, SensorView
from bastion.demo.view import AttackLine, LiveView, PlainView, ViewState, printable, status_line


def state(elapsed: float, attacks: tuple[AttackLine, ...] = ()) -> ViewState:
    snap = MonitorSnapshot(
        connected=True,
        sensors=(
            SensorView("temp/sensor1", "sensor1", 12, 21.5, "°C", "online"),
            SensorView("humid/sensor2", "sensor2", 8, 40.25, "%", "offline"),
        ),
        alerts=2,
        offline_alerts=1,
        alerts_by_kind={"motion": 1, "offline": 1},
        recent_alerts=(AlertSeen(1.0, "offline", "sensor2", "device went offline"),),
        door_results=(DoorResult(2.0, "accepted", "unlocked", "r-1", 2),),
        statuses={},
        invalid_readings=0,
        messages=30,
    )
    return ViewState(
        elapsed=elapsed,
        duration=60.0,
        phase="running",
        broker="mqtts://127.0.0.1:8883 (TLS 1.3)",
        state_dir="bastion-demo",
        monitor=snap,
        logged=19,
        security={"auth_failure": 3, "acl_denied": 1},
        attacks=attacks,
        services={"sensor1": "up", "sensor2": "killed"},
    )


def test_status_line() -> None:
    attacks = (AttackLine("a", "ACL", True, ""), AttackLine("b", "ban", False, ""))
    assert status_line(state(3.0, attacks)) == (
        "readings temp/sensor1=12 humid/sensor2=8 | alerts 2 (offline 1) | logged 19 | "
        "security events 4 | attacks 1/2 blocked"
    )


def test_plain_view_prints_events_and_a_status_line_every_few_seconds() -> None:
    out = io.StringIO()
    view = PlainView(out)
    view.start()
    view.event(1.25, "sensor2 is offline")
    for second in (1.0, 4.9, 5.0, 7.0, 10.2):
        view.refresh(state(second))
    view.stop()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[   1.2s] sensor2 is offline"
    assert [line[:9] for line in lines[1:]] == ["[   5.0s]", "[  10.2s]"]
    assert all("readings temp/sensor1=12" in line for line in lines[1:])


def test_live_view_renders_every_part() -> None:
    console = Console(record=True, width=140, file=io.StringIO(), force_terminal=False)
    view = LiveView(console)
    view.event(2.0, "result/door1: accepted, door unlocked (QoS 2)")
    attacks = (
        AttackLine("anonymous connect", "authentication", True, "CONNACK 0x87"),
        AttackLine("message flood", "rate limit", False, "all delivered"),
    )
    console.print(view.render(state(12.0, attacks)))
    text = console.export_text()
    for expected in (
        "temp/sensor1",
        "21.5 °C",
        "40.25 %",
        "offline",
        "accepted, unlocked (QoS 2)",
        "logger stored",
        "auth_failure",
        "attacks: 1/2 blocked",
        "NOT BLOCKED",
        "authentication",
        "result/door1: accepted",
        "sensor2 killed",
    ):
        assert expected in text, expected


def test_live_view_starts_and_stops_on_a_console() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    view = LiveView(console)
    view.start()
    view.refresh(state(1.0))
    view.event(1.5, "hello")
    view.stop()
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert "temp/sensor1" in output
    assert "hello" in output


def test_control_characters_never_reach_the_terminal() -> None:
    assert printable("id \x1b[2J\x07\nx\x9b é") == "id \\x1b[2J\\x07\\x0ax\\x9b é"
    out = io.StringIO()
    PlainView(out).event(1.0, "client \x1b]0;pwned\x07")
    assert "\x1b" not in out.getvalue()
    assert "\\x1b]0;pwned\\x07" in out.getvalue()
