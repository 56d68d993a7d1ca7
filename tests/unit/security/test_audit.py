"""Unit tests for ``bastion.security.audit``: counting, aggregation of repeats, rendering.

The aggregation clock is a float; wall-clock timestamps are fixed datetimes, so every JSON
line is asserted character for character.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bastion.errors import ConfigError
from bastion.security.audit import (
    SYS_SECURITY_PREFIX,
    AuditRecord,
    AuditTrail,
    SecurityEvent,
    SecurityEventKind,
)
from bastion.security.bans import Ban, BanKind

K = SecurityEventKind
TS = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
IP = "192.0.2.10"


def _auth_failure(username: str = "admin", ip: str = IP) -> SecurityEvent:
    return SecurityEvent(
        K.AUTH_FAILURE,
        detail="bad user name or password",
        client_id=f"c-{username}",
        username=username,
        ip=ip,
        reason_code=0x86,
    )


def _acl_denied(username: str, topic: str = "motion/x") -> SecurityEvent:
    return SecurityEvent(
        K.ACL_DENIED,
        detail="publish not authorized",
        client_id=username,
        username=username,
        ip=IP,
        reason_code=0x87,
        topic=topic,
    )


def test_counters_list_every_kind_and_count_every_event() -> None:
    trail = AuditTrail()
    assert trail.counters() == {kind.value: 0 for kind in K}
    for t in range(5):
        trail.record(_auth_failure(), float(t))
    trail.record(_acl_denied("u1"), 0.0)
    counters = trail.counters()
    assert counters["auth_failure"] == 5
    assert counters["acl_denied"] == 1
    assert sum(counters.values()) == 6


def test_first_event_is_written_at_once_and_repeats_become_one_summary() -> None:
    trail = AuditTrail(window=10.0)
    first = trail.record(_auth_failure(), 100.0)
    assert first == [AuditRecord(_auth_failure())]
    for n in range(532):
        assert trail.record(_auth_failure(username=f"guess{n}"), 100.0 + n / 100) == []
    assert trail.flush(109.99) == []
    (summary,) = trail.flush(110.0)
    assert summary.summary
    assert summary.count == 532
    assert summary.window == 10.0
    assert summary.message == "auth_failure from ip=192.0.2.10 repeated 532 times in 10 s"
    # The usernames varied: the summary keeps only what the repeats had in common.
    assert summary.event == SecurityEvent(K.AUTH_FAILURE, ip=IP, reason_code=0x86)
    assert trail.flush(1000.0) == []
    assert trail.counters()["auth_failure"] == 533


def test_a_group_without_repeats_closes_silently() -> None:
    trail = AuditTrail(window=10.0)
    assert len(trail.record(_auth_failure(), 0.0)) == 1
    assert trail.next_deadline() == 10.0
    assert trail.flush(10.0) == []
    assert trail.next_deadline() is None
    assert len(trail.record(_auth_failure(), 11.0)) == 1  # a new group: written in full


def test_an_event_after_the_window_closes_the_old_group_itself() -> None:
    trail = AuditTrail(window=10.0)
    trail.record(_auth_failure(), 0.0)
    trail.record(_auth_failure(), 5.0)
    trail.record(_auth_failure(), 9.0)
    records = trail.record(_auth_failure(), 12.0)  # no flush in between
    assert [(r.summary, r.count, r.window) for r in records] == [(True, 2, 10.0), (False, 1, 0.0)]
    assert trail.next_deadline() == 22.0


def test_grouping_follows_the_kind() -> None:
    trail = AuditTrail()
    # Before authentication only the source address is trustworthy: one group per IP.
    assert len(trail.record(_auth_failure("a"), 0.0)) == 1
    assert trail.record(_auth_failure("b"), 0.0) == []
    assert len(trail.record(_auth_failure("a", ip="192.0.2.11"), 0.0)) == 1
    # After authentication users are told apart; topics are not (they vary at will).
    assert len(trail.record(_acl_denied("u1", "a"), 0.0)) == 1
    assert trail.record(_acl_denied("u1", "b"), 0.0) == []
    assert len(trail.record(_acl_denied("u2", "a"), 0.0)) == 1
    # A different reason code is a different problem.
    bytes_ = SecurityEvent(K.RATE_LIMITED, username="u1", ip=IP, reason_code=0x97)
    messages = SecurityEvent(K.RATE_LIMITED, username="u1", ip=IP, reason_code=0x96)
    assert len(trail.record(bytes_, 0.0)) == 1
    assert len(trail.record(messages, 0.0)) == 1
    assert trail.record(messages, 1.0) == []


def test_summary_of_a_user_group_names_ip_and_user() -> None:
    trail = AuditTrail(window=10.0)
    for topic in ("a", "b", "c"):
        trail.record(_acl_denied("u1", topic), 0.0)
    (summary,) = trail.flush(10.0)
    assert summary.message == "acl_denied from ip=192.0.2.10 username=u1 repeated 2 times in 10 s"
    assert summary.event.topic is None
    assert summary.event.detail == ""


def test_full_table_closes_the_oldest_group_early() -> None:
    trail = AuditTrail(window=10.0, max_groups=2)
    trail.record(_auth_failure(ip="192.0.2.1"), 0.0)
    trail.record(_auth_failure(ip="192.0.2.1"), 1.0)
    trail.record(_auth_failure(ip="192.0.2.2"), 2.0)
    records = trail.record(_auth_failure(ip="192.0.2.3"), 4.0)
    assert [(r.summary, r.count, r.window, r.event.ip) for r in records] == [
        (True, 1, 4.0, "192.0.2.1"),
        (False, 1, 0.0, "192.0.2.3"),
    ]
    assert trail.evicted == 1
    trail.record(_auth_failure(ip="192.0.2.4"), 5.0)  # evicts 192.0.2.2: no repeats, no line
    assert trail.evicted == 2
    assert trail.counters()["auth_failure"] == 5


def test_drain_closes_every_group() -> None:
    trail = AuditTrail(window=10.0)
    trail.record(_auth_failure(ip="192.0.2.1"), 0.0)
    trail.record(_auth_failure(ip="192.0.2.1"), 1.0)
    trail.record(_auth_failure(ip="192.0.2.2"), 2.0)
    trail.record(_auth_failure(ip="192.0.2.3"), 3.0)
    trail.record(_auth_failure(ip="192.0.2.3"), 3.0)
    records = trail.drain(4.0)
    assert [(r.event.ip, r.count, r.window) for r in records] == [
        ("192.0.2.1", 1, 4.0),
        ("192.0.2.3", 1, 1.0),
    ]
    assert trail.next_deadline() is None


def test_flush_closes_groups_in_start_order() -> None:
    trail = AuditTrail(window=10.0)
    for n, t in enumerate((0.0, 3.0, 6.0)):
        ip = f"192.0.2.{n}"
        trail.record(_auth_failure(ip=ip), t)
        trail.record(_auth_failure(ip=ip), t + 1)
    assert [r.event.ip for r in trail.flush(13.0)] == ["192.0.2.0", "192.0.2.1"]
    assert trail.next_deadline() == 16.0


def test_audit_trail_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError):
        AuditTrail(window=0.0)
    with pytest.raises(ConfigError):
        AuditTrail(max_groups=0)


# --- rendering -----------------------------------------------------------------------------


def test_json_line_has_stable_keys_and_values() -> None:
    record = AuditRecord(_acl_denied("sensor1", "temp/sensor2"))
    assert record.to_json(TS) == (
        '{"ts":"2024-05-01T12:00:00.123Z","level":"warning","event":"security.acl_denied",'
        '"kind":"acl_denied","message":"acl_denied: publish not authorized",'
        '"ip":"192.0.2.10","username":"sensor1","client_id":"sensor1","topic":"temp/sensor2",'
        '"reason_code":135,"detail":"publish not authorized","count":1,"window_s":0.0,'
        '"summary":false}'
    )


def test_summary_json_line() -> None:
    record = AuditRecord(
        SecurityEvent(K.AUTH_FAILURE, ip=IP, reason_code=0x86), count=532, window=10.0, summary=True
    )
    line = json.loads(record.to_json(TS))
    assert list(line) == [
        "ts",
        "level",
        "event",
        "kind",
        "message",
        "ip",
        "username",
        "client_id",
        "topic",
        "reason_code",
        "detail",
        "count",
        "window_s",
        "summary",
    ]
    assert line["message"] == "auth_failure from ip=192.0.2.10 repeated 532 times in 10 s"
    assert line["count"] == 532
    assert line["summary"] is True
    assert line["username"] is None


@pytest.mark.parametrize(
    "ts",
    [
        TS,
        datetime(2024, 5, 1, 14, 0, 0, 123999, tzinfo=timezone(timedelta(hours=2))),
        TS.timestamp(),
    ],
)
def test_timestamps_are_utc_milliseconds(ts: datetime | float) -> None:
    line = json.loads(AuditRecord(SecurityEvent(K.FLAPPING)).to_json(ts))
    assert line["ts"] == "2024-05-01T12:00:00.123Z"


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        AuditRecord(SecurityEvent(K.FLAPPING)).to_json(datetime(2024, 5, 1))


def test_hostile_strings_stay_on_one_ascii_line() -> None:
    topic = "a\udcff\u0000b\nc\u202e\u00e9\x1b[31m"  # lone surrogate, NUL, newline, bidi, ESC
    event = SecurityEvent(K.INVALID_UTF8, detail="bad topic", ip=IP, topic=topic)
    line = AuditRecord(event).to_json(TS)
    assert line.isascii()
    assert "\n" not in line
    assert "\x1b" not in line
    assert json.loads(line)["topic"] == topic
    assert AuditRecord(event).sys_payload(TS) == line.encode("ascii")


def test_attacker_sized_fields_are_clipped() -> None:
    trail = AuditTrail()
    event = SecurityEvent(
        K.INVALID_UTF8, detail="d" * 5000, client_id="c" * 65535, ip=IP, topic="t" * 65535
    )
    (record,) = trail.record(event, 0.0)
    assert record.event.topic == "t" * 256 + "...[+65279 chars]"
    assert record.event.client_id == "c" * 256 + "...[+65279 chars]"
    assert record.event.detail == "d" * 1024 + "...[+3976 chars]"
    assert len(record.to_json(TS)) < 4000  # bounded whatever the input size
    short = SecurityEvent(K.INVALID_UTF8, detail="x", topic="t" * 256)
    assert trail.record(short, 0.0)[0].event is short  # within limits: kept as it came


def test_sys_topic_and_payload() -> None:
    record = AuditRecord(_auth_failure())
    assert record.sys_topic == "$SYS/security/auth_failure"
    assert record.sys_topic.startswith(SYS_SECURITY_PREFIX)
    assert record.sys_payload(TS) == record.to_json(TS).encode()


def test_every_kind_has_a_topic_level_and_a_level() -> None:
    trail = AuditTrail()
    for kind in K:
        (record,) = trail.record(SecurityEvent(kind, ip=IP), 0.0)
        assert record.level in {"info", "warning"}
        assert not set(kind.value) & set("+#/\x00")
        assert record.sys_topic == f"$SYS/security/{kind.value}"
        json.loads(record.to_json(TS))


def test_events_from_bans() -> None:
    ip_ban = Ban(BanKind.IP, IP, 900.0, "10 authentication failures in 600 s")
    event = SecurityEvent.from_ban(ip_ban)
    assert event == SecurityEvent(K.BANNED, detail="10 authentication failures in 600 s", ip=IP)
    assert AuditRecord(event).level == "warning"
    lifted = SecurityEvent.from_ban(Ban(BanKind.CLIENT_ID, "c1", 1.0, "flapping"), lifted=True)
    assert lifted == SecurityEvent(K.BAN_LIFTED, detail="flapping", client_id="c1")
    assert AuditRecord(lifted).level == "info"
    user = SecurityEvent.from_ban(Ban(BanKind.USERNAME, "admin", 1.0, "r"))
    assert (user.username, user.ip, user.client_id) == ("admin", None, None)


def test_distinct_bans_are_not_merged() -> None:
    trail = AuditTrail()
    first = Ban(BanKind.CLIENT_ID, "c1", 1.0, "r")
    second = Ban(BanKind.CLIENT_ID, "c2", 1.0, "r")
    assert len(trail.record(SecurityEvent.from_ban(first), 0.0)) == 1
    assert len(trail.record(SecurityEvent.from_ban(second), 0.0)) == 1


def test_single_event_message_without_detail() -> None:
    assert AuditRecord(SecurityEvent(K.CONNECT_TIMEOUT, ip=IP)).message == "connect_timeout"
    summary = AuditRecord(SecurityEvent(K.CONNECT_TIMEOUT), count=3, window=2.5, summary=True)
    assert summary.message == "connect_timeout repeated 3 times in 2.5 s"
