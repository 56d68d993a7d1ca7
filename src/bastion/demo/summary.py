"""The end of a demo run: the JSON summary, where everything was written, how to look yourself.

``build_summary`` makes the one JSON object a headless run prints last (and keeps in
``summary.json``); ``where_lines`` and ``mosquitto_sub_command`` tell a person what to open
and paste. Counts only: no reading value ever goes into the state directory in plaintext.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from bastion.demo.access import VIEWER
from bastion.demo.monitor import MonitorSnapshot
from bastion.demo.statedir import StateLayout
from bastion.demo.view import AttackLine

__all__ = [
    "FlowReport",
    "RunFacts",
    "attack_summary",
    "build_summary",
    "mosquitto_sub_command",
    "print_report",
    "summary_json",
    "where_lines",
]


@dataclass(frozen=True, slots=True)
class FlowReport:
    """Reading rates per sensor topic before and while the attacker ran (readings/s)."""

    before: Mapping[str, float]
    during: Mapping[str, float]
    kept_flowing: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "before_attack_per_s": {t: round(r, 2) for t, r in self.before.items()},
            "during_attack_per_s": {t: round(r, 2) for t, r in self.during.items()},
            "kept_flowing": self.kept_flowing,
        }


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the orchestrator knows at the end, besides the monitor's counters."""

    layout: StateLayout
    host: str
    port: int
    duration_s: float
    reused_state: bool
    logged: int
    security_events: Mapping[str, int]
    attacks: Sequence[AttackLine] = ()
    attacked: bool = False
    flow: FlowReport | None = None
    killed: Mapping[str, object] = field(default_factory=dict)
    door_commands: Sequence[Mapping[str, object]] = ()
    services: Mapping[str, object] = field(default_factory=dict)
    errors: Sequence[str] = ()
    warnings: Sequence[str] = ()
    interrupted: bool = False


def attack_summary(attacks: Sequence[AttackLine]) -> dict[str, object]:
    """``{"tried", "blocked", "by_control": {control: blocked}, "results": [...]}``."""
    by_control: dict[str, int] = {}
    for attack in attacks:
        if attack.blocked:
            by_control[attack.control] = by_control.get(attack.control, 0) + 1
    return {
        "tried": len(attacks),
        "blocked": sum(1 for attack in attacks if attack.blocked),
        "by_control": by_control,
        "results": [
            {"name": a.name, "control": a.control, "blocked": a.blocked, "detail": a.detail}
            for a in attacks
        ],
    }


def build_summary(snap: MonitorSnapshot, facts: RunFacts) -> dict[str, object]:
    """The run as one JSON-ready object (the keys the README and the checker rely on first)."""
    layout = facts.layout
    summary: dict[str, object] = {
        "readings": snap.readings(),
        "alerts": snap.alerts,
        "offline_alerts": snap.offline_alerts,
        "logged": facts.logged,
        "attacks": attack_summary(facts.attacks),
        "alerts_by_kind": dict(snap.alerts_by_kind),
        "security_events": dict(facts.security_events),
        "door": {
            "commands": [dict(command) for command in facts.door_commands],
            "results": [
                {"outcome": r.outcome, "state": r.state, "request_id": r.request_id, "qos": r.qos}
                for r in snap.door_results
            ],
        },
        "killed": dict(facts.killed),
        "statuses": dict(snap.statuses),
        "state_dir": str(layout.root),
        "config": str(layout.config),
        "logger_db": str(layout.logger_db),
        "logs": str(layout.logs),
        "host": facts.host,
        "port": facts.port,
        "duration_s": round(facts.duration_s, 1),
        "reused_state": facts.reused_state,
        "attacked": facts.attacked,
        "services": dict(facts.services),
        "interrupted": facts.interrupted,
        "errors": list(facts.errors),
        "warnings": list(facts.warnings),
    }
    if facts.flow is not None:
        summary["flow"] = facts.flow.as_dict()
    return summary


def summary_json(summary: Mapping[str, object]) -> str:
    """One line of JSON."""
    return json.dumps(summary, separators=(",", ":"), ensure_ascii=False)


def mosquitto_sub_command(layout: StateLayout, host: str, port: int, version: int = 5) -> str:
    """A ready-to-paste ``mosquitto_sub`` that watches everything as the read-only viewer.

    The password is read from its file by the shell, so it never lands in shell history.
    """
    password = shlex.quote(str(layout.credential(VIEWER)))
    protocol = "mqttv5" if version == 5 else "mqttv311"
    parts = [
        "mosquitto_sub",
        "--cafile",
        shlex.quote(str(layout.ca_cert)),
        "-h",
        shlex.quote(host),
        "-p",
        str(port),
        "-u",
        VIEWER,
        "-P",
        f'"$(cat {password})"',
        "-i",
        f"{VIEWER}-sub",
        "-V",
        protocol,
        "-t",
        "'#'",
        "-v",
    ]
    return " ".join(parts)


def where_lines(layout: StateLayout) -> list[str]:
    """Where everything was written, one line each."""
    return [
        f"state directory  {layout.root}",
        f"broker config    {layout.config}   (run it alone: bastion serve -c {layout.config})",
        f"dev PKI          {layout.pki}   (CA: {layout.ca_cert})",
        f"credentials      {layout.credentials}   (one password per client, 0600)",
        f"passwords / ACL  {layout.passwd}, {layout.acl}",
        f"broker database  {layout.broker_db}   (encrypted; master key {layout.master_key})",
        f"logger database  {layout.logger_db}   (encrypted; "
        f"bastion logger query --state-dir {shlex.quote(str(layout.root))} --topic 'temp/#')",
        f"logs             {layout.logs}   (JSON lines; security events in {layout.audit_log})",
    ]


def print_report(out: TextIO, facts: RunFacts, summary: Mapping[str, object], status: str) -> None:
    """The closing lines: the outcome, problems, where things are, how to watch; JSON last."""
    layout = facts.layout
    lines = [f"demo: finished after {facts.duration_s:.1f}s: {status}"]
    lines += [f"demo: problem: {error}" for error in facts.errors]
    lines += [f"demo: warning: {warning}" for warning in facts.warnings]
    lines.append("demo: everything was written here:")
    lines += [f"  {line}" for line in where_lines(layout)]
    lines.append("demo: watch the traffic yourself while a demo runs (read-only credential):")
    lines.append(f"  {mosquitto_sub_command(layout, facts.host, facts.port)}")
    lines.append(summary_json(summary))
    out.write("\n".join(lines) + "\n")
    out.flush()
