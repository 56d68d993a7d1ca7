"""The end of a run (``demo/summary.py``): the JSON summary, the report, the mosquitto_sub line."""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path

from bastion.demo.monitor import MonitorSnapshot, SensorView
from bastion.demo.statedir import StateLayout
from bastion.demo.summary import (
    FlowReport,
    RunFacts,
    attack_summary,
    build_summary,
    mosquitto_sub_command,
    print_report,
)
from bastion.demo.view import AttackLine

ATTACKS = [
    AttackLine("anonymous connect", "authentication", True, "CONNACK 0x87"),
    AttackLine("TLS 1.0 handshake", "TLS 1.3 minimum", True, "alert 70"),
    AttackLine("TLS 1.1 handshake", "TLS 1.3 minimum", True, "alert 70"),
    AttackLine("message flood", "rate limit", False, "all 500 delivered"),
]


def snapshot() -> MonitorSnapshot:
    sensors = (
        SensorView("temp/sensor1", "sensor1", 12, 21.5, "°C", "online"),
        SensorView("humid/sensor2", "sensor2", 8, 40.0, "%", "offline"),
        SensorView("motion/sensor3", "sensor3", 3, 1.0, "event", "online"),
    )
    return MonitorSnapshot(
        connected=True,
        sensors=sensors,
        alerts=3,
        offline_alerts=1,
        alerts_by_kind={"motion": 2, "offline": 1},
        recent_alerts=(),
        door_results=(),
        statuses={"sensor2": "offline"},
        invalid_readings=0,
        messages=40,
    )


def facts(tmp_path: Path, **extra: object) -> RunFacts:
    base: dict[str, object] = {
        "layout": StateLayout(tmp_path / "demo dir"),
        "host": "127.0.0.1",
        "port": 18883,
        "duration_s": 20.04,
        "reused_state": True,
        "logged": 57,
        "security_events": {"auth_failure": 4},
    }
    base.update(extra)
    return RunFacts(**base)  # type: ignore[arg-type]


def test_the_summary_has_the_documented_keys(tmp_path: Path) -> None:
    summary = build_summary(snapshot(), facts(tmp_path))
    assert summary["readings"] == {"temp/sensor1": 12, "humid/sensor2": 8, "motion/sensor3": 3}
    assert (summary["alerts"], summary["offline_alerts"], summary["logged"]) == (3, 1, 57)
    assert summary["attacks"] == {"tried": 0, "blocked": 0, "by_control": {}, "results": []}
    assert summary["security_events"] == {"auth_failure": 4}
    assert summary["port"] == 18883
    assert summary["duration_s"] == 20.0
    assert summary["reused_state"] is True
    assert "flow" not in summary
    json.dumps(summary)  # JSON-ready as it is


def test_attacks_are_counted_by_the_control_that_blocked_them() -> None:
    counted = attack_summary(ATTACKS)
    assert counted["tried"] == 4
    assert counted["blocked"] == 3
    assert counted["by_control"] == {"authentication": 1, "TLS 1.3 minimum": 2}
    results = counted["results"]
    assert isinstance(results, list)
    assert results[3] == {
        "name": "message flood",
        "control": "rate limit",
        "blocked": False,
        "detail": "all 500 delivered",
    }


def test_flow_goes_into_the_summary_when_attacked(tmp_path: Path) -> None:
    flow = FlowReport({"temp/sensor1": 1.0}, {"temp/sensor1": 0.956}, kept_flowing=True)
    summary = build_summary(snapshot(), facts(tmp_path, flow=flow, attacked=True))
    assert summary["flow"] == {
        "before_attack_per_s": {"temp/sensor1": 1.0},
        "during_attack_per_s": {"temp/sensor1": 0.96},
        "kept_flowing": True,
    }


def test_mosquitto_sub_command_is_ready_to_paste(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path / "demo dir")
    words = shlex.split(mosquitto_sub_command(layout, "127.0.0.1", 18883))
    assert words[0] == "mosquitto_sub"
    flags = dict(zip(words[1::2], words[2::2], strict=False))
    assert flags["--cafile"] == str(layout.ca_cert)  # quoted: the path has a space
    assert flags["-h"] == "127.0.0.1"
    assert flags["-p"] == "18883"
    assert flags["-u"] == "viewer"
    assert flags["-P"] == f"$(cat {shlex.quote(str(layout.credential('viewer')))})"
    assert flags["-V"] == "mqttv5"
    assert flags["-t"] == "#"
    assert words[-1] == "-v"
    assert "mqttv311" in mosquitto_sub_command(layout, "127.0.0.1", 1, version=4)


def test_the_report_ends_with_the_json_line(tmp_path: Path) -> None:
    out = io.StringIO()
    run = facts(tmp_path, errors=["sensor1 exited with code 1"])
    summary = build_summary(snapshot(), run)
    print_report(out, run, summary, "readings ...")
    lines = out.getvalue().splitlines()
    assert lines[0] == "demo: finished after 20.0s: readings ..."
    assert "demo: problem: sensor1 exited with code 1" in lines
    assert any(line.strip().startswith("mosquitto_sub ") for line in lines)
    assert any("logger database" in line for line in lines)
    assert json.loads(lines[-1]) == summary
