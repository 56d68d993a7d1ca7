"""Unit tests for the runtime's security assembly: policy from settings, audit monitor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog

from bastion.config.schema import ListenerSettings, SecuritySettings
from bastion.errors import ConfigError
from bastion.runtime.security import (
    SecurityMonitor,
    build_policy,
    is_loopback,
    warn_plain_listener,
)
from bastion.security.audit import SecurityEvent, SecurityEventKind
from bastion.security.policy import ClientIdentity


def test_policy_from_files(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("user logger\ntopic read #\n")
    policy = build_policy(SecuritySettings(acl_file=str(acl)))
    assert policy.acl is not None
    assert policy.may_receive(ClientIdentity("c", "logger", "p"), "a/b")
    assert not policy.may_publish(ClientIdentity("c", "logger", "p"), "a/b")


def test_policy_from_toml_rules() -> None:
    rules: dict[str, object] = {"rules": [{"user": "s1", "access": "write", "topic": "temp/s1"}]}
    policy = build_policy(SecuritySettings(acl=rules))
    assert policy.may_publish(ClientIdentity("s1", "s1", "p"), "temp/s1")


def test_policy_gets_the_user_qos_ceilings() -> None:
    security = SecuritySettings.model_validate({"users": {"meter": {"max_qos": 0}, "admin": {}}})
    policy = build_policy(security)
    assert dict(policy.user_max_qos) == {"meter": 0}


def test_bad_acl_file_is_a_config_error(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic bogus-access a/b extra\nfrobnicate\n")
    with pytest.raises(ConfigError) as caught:
        build_policy(SecuritySettings(acl_file=str(acl)))
    assert str(acl) in str(caught.value)


def test_missing_password_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        build_policy(SecuritySettings(password_file=str(tmp_path / "missing")))


def test_dev_mode_warnings_are_logged() -> None:
    with structlog.testing.capture_logs() as logs:
        build_policy(SecuritySettings(allow_anonymous=True))
    events = {entry["event"] for entry in logs}
    assert {"security.anonymous_allowed", "security.acl_open"} <= events


def test_missing_acl_warns_deny_all() -> None:
    with structlog.testing.capture_logs() as logs:
        policy = build_policy(SecuritySettings())
    assert any(entry["event"] == "security.acl_missing" for entry in logs)
    assert not policy.may_publish(ClientIdentity("c", "u", "p"), "a")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_plain_listener_off_loopback_warns() -> None:
    with structlog.testing.capture_logs() as logs:
        warn_plain_listener(ListenerSettings(host="0.0.0.0", port=1883))
        warn_plain_listener(ListenerSettings(host="127.0.0.1", port=1883))
    assert [entry["event"] for entry in logs] == ["security.plain_listener"]


def test_monitor_writes_json_lines_and_publishes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    published: list[tuple[str, bytes]] = []
    monitor = SecurityMonitor(str(path), lambda topic, payload: published.append((topic, payload)))
    event = SecurityEvent(
        SecurityEventKind.AUTH_FAILURE, "bad password", "c1", "u", "10.0.0.9", 0x86
    )
    monitor.record(event, 0.0)
    for i in range(50):  # repeats are aggregated, not written one by one
        monitor.record(event, 0.1 + i * 0.01)
    monitor.close(100.0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["event"] == "security.auth_failure"
    assert lines[0]["ip"] == "10.0.0.9"
    assert len(lines) == 2
    assert lines[1]["summary"] is True
    assert lines[1]["count"] == 50
    assert published[0][0] == "$SYS/security/auth_failure"
    assert monitor.counters()["auth_failure"] == 51


def test_monitor_survives_a_failing_publisher(tmp_path: Path) -> None:
    def broken(topic: str, payload: bytes) -> None:
        raise RuntimeError("boom")

    monitor = SecurityMonitor(None, broken)
    with structlog.testing.capture_logs() as logs:
        monitor.record(SecurityEvent(SecurityEventKind.BANNED, "x", ip="1.2.3.4"), 0.0)
    assert any(entry["event"] == "audit.failed" for entry in logs)


def test_unwritable_audit_log_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        SecurityMonitor(str(tmp_path / "no" / "such" / "dir" / "audit.jsonl"))
    assert "cannot open the audit log" in str(caught.value)


def test_monitor_publishes_changed_counters_at_the_interval() -> None:
    published: list[tuple[str, bytes]] = []
    monitor = SecurityMonitor(None, lambda topic, payload: published.append((topic, payload)))
    monitor.publish_counters(0.0, 10.0)
    first = dict(published)
    assert first["$SYS/security/counters/auth_failure"] == b"0"
    published.clear()
    with structlog.testing.capture_logs():
        monitor.record(SecurityEvent(SecurityEventKind.AUTH_FAILURE, "x", ip="1.2.3.4"), 1.0)
    published.clear()
    monitor.publish_counters(5.0, 10.0)  # not due yet
    assert published == []
    monitor.publish_counters(10.0, 10.0)
    assert published == [("$SYS/security/counters/auth_failure", b"1")]  # only what changed
