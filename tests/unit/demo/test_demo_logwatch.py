"""Reading the children's logs (``demo/logwatch.py``): security events, logger counts, warnings."""

from __future__ import annotations

import json
from pathlib import Path

from bastion.demo.logwatch import MAX_SERVICE_EVENTS, LogWatch


def append(path: Path, *records: dict[str, object]) -> None:
    with path.open("a") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def test_security_events_are_counted_with_their_repeats(tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    append(audit, {"kind": "auth_failure", "count": 1, "message": "from an earlier run"})
    watch = LogWatch(tmp_path / "broker.log", audit)
    append(
        audit,
        {"kind": "auth_failure", "count": 1, "summary": False, "message": "bad password"},
        {"kind": "auth_failure", "count": 7, "summary": True, "message": "repeated 7 times"},
        {"kind": "acl_denied", "count": 1, "summary": False, "message": "acl_denied: x"},
    )
    seen = watch.read()
    assert watch.security == {"auth_failure": 8, "acl_denied": 1}
    assert seen.events == ["security: bad password", "security: acl_denied: x"]


def test_the_logger_total_and_service_warnings(tmp_path: Path) -> None:
    watch = LogWatch(tmp_path / "broker.log", tmp_path / "audit.log")
    logger, sensor = tmp_path / "logger.log", tmp_path / "sensor1.log"
    watch.add_service("logger", logger)
    watch.add_service("sensor1", sensor)
    append(
        logger,
        {"event": "logger.stored", "count": 10, "total": 10},
        {"event": "logger.stored", "count": 5, "total": 15},
    )
    append(sensor, {"level": "info", "event": "sensor.published", "count": 3})
    warning: dict[str, object] = {
        "level": "warning",
        "event": "client.connect_failed",
        "reason": "refused",
    }
    append(sensor, *([warning] * (MAX_SERVICE_EVENTS + 5)))
    seen = watch.read()
    assert watch.logged == 15
    assert seen.events == ["sensor1: client.connect_failed refused"] * MAX_SERVICE_EVENTS
    assert seen.warnings == []


def test_broker_errors_are_warnings(tmp_path: Path) -> None:
    broker = tmp_path / "broker.log"
    watch = LogWatch(broker, tmp_path / "audit.log")
    append(
        broker,
        {"level": "info", "event": "broker.started"},
        {"level": "error", "event": "tls.session_failed", "error": "boom"},
    )
    started, failed = watch.broker_records()
    assert started == {"level": "info", "event": "broker.started"}
    assert failed["event"] == "tls.session_failed"
    append(broker, {"level": "error", "event": "listener.failed", "error": "in use"})
    seen = watch.read()
    assert seen.warnings == ["broker error: listener.failed in use"]
    assert seen.events == seen.warnings
