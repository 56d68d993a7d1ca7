"""Reading the children's JSON logs while the demo runs: security events, logger counts.

The broker's audit log gives the security events (counted per kind, repeats included);
the logger's ``logger.stored`` lines give how many messages it has stored; warnings and
errors of any child become events for the view (a bounded number per child).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bastion.demo.processes import LogTail

__all__ = ["LogWatch", "Observations"]

MAX_SERVICE_EVENTS: Final = 20  # warnings shown per service; later ones are only counted
MAX_MESSAGE: Final = 160


@dataclass(slots=True)
class Observations:
    """What one read of the logs brought: lines for the view, and warnings for the summary."""

    events: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the broker's error lines


class LogWatch:
    """The broker log, the audit log and each service's log, read incrementally."""

    def __init__(self, broker_log: Path, audit_log: Path) -> None:
        self._broker = LogTail(broker_log)
        self._audit = LogTail(audit_log, from_end=True)  # the broker appends across runs
        self._services: dict[str, LogTail] = {}
        self._shown: dict[str, int] = {}
        self.logged = 0  # messages the logger reports stored
        self.security: dict[str, int] = {}  # security events per kind

    def add_service(self, name: str, log: Path) -> None:
        """Also watch ``log`` (a service's stderr, JSON lines)."""
        self._services[name] = LogTail(log)

    def broker_records(self) -> list[dict[str, object]]:
        """New broker log records (read directly while the broker starts)."""
        return self._broker.read()

    def read(self) -> Observations:
        """Everything new in every log."""
        seen = Observations()
        for record in self._broker.read():
            if record.get("level") == "error":
                text = f"broker error: {record.get('event')} {record.get('error', '')}".strip()
                seen.warnings.append(text)
                seen.events.append(text)
        for record in self._audit.read():
            self._security(record, seen)
        for name, tail in self._services.items():
            for record in tail.read():
                self._service(name, record, seen)
        return seen

    def _security(self, record: dict[str, object], seen: Observations) -> None:
        kind = str(record.get("kind", "unknown"))
        count = record.get("count", 1)
        self.security[kind] = self.security.get(kind, 0) + (count if isinstance(count, int) else 1)
        if not record.get("summary"):
            seen.events.append(f"security: {str(record.get('message', kind))[:MAX_MESSAGE]}")

    def _service(self, name: str, record: dict[str, object], seen: Observations) -> None:
        event = str(record.get("event", ""))
        if name == "logger" and event == "logger.stored":
            total = record.get("total")
            if isinstance(total, int) and not isinstance(total, bool):
                self.logged = max(self.logged, total)
            return
        if record.get("level") not in ("warning", "error"):
            return
        shown = self._shown.get(name, 0)
        self._shown[name] = shown + 1
        if shown < MAX_SERVICE_EVENTS:
            reason = record.get("reason") or record.get("error") or ""
            seen.events.append(f"{name}: {event} {reason}".strip()[:MAX_MESSAGE])
