"""Security events: counted per kind, repeats aggregated, rendered as JSON lines and $SYS messages.

Pure like the rest of ``security/``: ``AuditTrail`` returns the records to write and the
runtime writes them (audit log file, ``$SYS/security/<kind>`` for admins, metrics).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from types import MappingProxyType
from typing import Final, Literal

from bastion.errors import ConfigError
from bastion.security.bans import Ban, BanKind

__all__ = [
    "SYS_SECURITY_PREFIX",
    "AuditRecord",
    "AuditTrail",
    "SecurityEvent",
    "SecurityEventKind",
]

SYS_SECURITY_PREFIX: Final = "$SYS/security/"

MAX_FIELD_CHARS: Final = 256  # client id, username, ip, topic: attacker-sized, so clipped
MAX_DETAIL_CHARS: Final = 1024


class SecurityEventKind(Enum):
    """Every kind of security event; the value names its counter and its ``$SYS`` topic."""

    AUTH_FAILURE = "auth_failure"  # bad credentials, anonymous refused, unknown cert user
    ACL_DENIED = "acl_denied"  # publish, subscribe, retain, will or delivery refused
    CLIENT_ID_DENIED = "client_id_denied"  # client id outside the user's rules (takeover)
    INVALID_UTF8 = "invalid_utf8"  # a string field that is not well-formed MQTT UTF-8
    PAYLOAD_INVALID = "payload_invalid"  # payload format indicator 1 with a non-UTF-8 payload
    PROTOCOL_VIOLATION = "protocol_violation"  # malformed packet, bad order, bad property
    LIMIT_EXCEEDED = "limit_exceeded"  # packet size, topic length/depth, queue, inflight …
    RATE_LIMITED = "rate_limited"  # publish budget (messages/s or bytes/s) overrun
    CONNECTION_REFUSED = "connection_refused"  # connection caps, banned client connecting
    CONNECT_TIMEOUT = "connect_timeout"  # no CONNECT in time (slowloris)
    FLAPPING = "flapping"  # reconnect storm detected
    BANNED = "banned"  # a ban was imposed
    BAN_LIFTED = "ban_lifted"  # a ban ended or was lifted
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"  # old protocol version, no shared cipher …
    CERTIFICATE_REJECTED = "certificate_rejected"  # invalid, expired or revoked client cert
    REDELIVERY_LIMIT = "redelivery_limit"  # message dropped after N delivery attempts


Level = Literal["info", "warning"]
_Field = Literal["ip", "username", "client_id"]


@dataclass(frozen=True, slots=True)
class _KindRow:
    aggregate_by: tuple[_Field, ...]  # besides kind and reason code
    level: Level


_BY_IP: Final[tuple[_Field, ...]] = ("ip",)
_BY_USER: Final[tuple[_Field, ...]] = ("ip", "username")
_BY_ALL: Final[tuple[_Field, ...]] = ("ip", "username", "client_id")

_K = SecurityEventKind
# How repeats are grouped, per kind. Before authentication, everything but the source address
# is the attacker's choice (usernames and client ids vary per attempt): group by source.
_KINDS: Final[Mapping[SecurityEventKind, _KindRow]] = MappingProxyType(
    {
        _K.AUTH_FAILURE: _KindRow(_BY_IP, "warning"),
        _K.ACL_DENIED: _KindRow(_BY_USER, "warning"),
        _K.CLIENT_ID_DENIED: _KindRow(_BY_USER, "warning"),
        _K.INVALID_UTF8: _KindRow(_BY_IP, "warning"),
        _K.PAYLOAD_INVALID: _KindRow(_BY_USER, "warning"),
        _K.PROTOCOL_VIOLATION: _KindRow(_BY_IP, "warning"),
        _K.LIMIT_EXCEEDED: _KindRow(_BY_USER, "warning"),
        _K.RATE_LIMITED: _KindRow(_BY_USER, "warning"),
        _K.CONNECTION_REFUSED: _KindRow(_BY_IP, "warning"),
        _K.CONNECT_TIMEOUT: _KindRow(_BY_IP, "warning"),
        _K.FLAPPING: _KindRow(_BY_ALL, "warning"),
        _K.BANNED: _KindRow(_BY_ALL, "warning"),
        _K.BAN_LIFTED: _KindRow(_BY_ALL, "info"),
        _K.TLS_HANDSHAKE_FAILED: _KindRow(_BY_IP, "warning"),
        _K.CERTIFICATE_REJECTED: _KindRow(_BY_IP, "warning"),
        _K.REDELIVERY_LIMIT: _KindRow(_BY_USER, "warning"),
    }
)

_BAN_FIELD: Final[Mapping[BanKind, _Field]] = MappingProxyType(
    {BanKind.IP: "ip", BanKind.USERNAME: "username", BanKind.CLIENT_ID: "client_id"}
)


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """One security-relevant thing that happened, as the front that saw it describes it.

    ``ip`` is the peer address without port; ``reason_code`` the wire answer given, if any
    (an MQTT reason code, or what another front maps to); ``detail`` a short text for people.
    """

    kind: SecurityEventKind
    detail: str = ""
    client_id: str | None = None
    username: str | None = None
    ip: str | None = None
    reason_code: int | None = None
    topic: str | None = None

    @classmethod
    def from_ban(cls, ban: Ban, *, lifted: bool = False) -> SecurityEvent:
        """The BANNED (or BAN_LIFTED) event for ``ban``."""
        kind = SecurityEventKind.BAN_LIFTED if lifted else SecurityEventKind.BANNED
        field = _BAN_FIELD[ban.kind]
        return cls(
            kind,
            detail=ban.reason,
            ip=ban.key if field == "ip" else None,
            username=ban.key if field == "username" else None,
            client_id=ban.key if field == "client_id" else None,
        )


def _clip(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}...[+{len(text) - limit} chars]"


def _clipped(event: SecurityEvent) -> SecurityEvent:
    """``event`` with attacker-sized fields cut, so one event costs a bounded log line."""
    fields = (event.client_id, event.username, event.ip, event.topic)
    if all(f is None or len(f) <= MAX_FIELD_CHARS for f in fields) and (
        len(event.detail) <= MAX_DETAIL_CHARS
    ):
        return event
    return replace(
        event,
        detail=_clip(event.detail, MAX_DETAIL_CHARS) or "",
        client_id=_clip(event.client_id, MAX_FIELD_CHARS),
        username=_clip(event.username, MAX_FIELD_CHARS),
        ip=_clip(event.ip, MAX_FIELD_CHARS),
        topic=_clip(event.topic, MAX_FIELD_CHARS),
    )


def _timestamp(ts: datetime | float) -> str:
    """UTC ISO 8601 with milliseconds and ``Z``: ``2024-05-01T12:00:00.123Z``."""
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise ValueError("audit timestamps must be timezone-aware")
        moment = ts.astimezone(UTC)
    else:
        moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One line of the audit log: a single event, or a summary of ``count`` repeats.

    A summary keeps only the fields its events were grouped by (the rest varied) and covers
    ``window`` seconds. Render with ``to_json``; publish on ``sys_topic`` with ``sys_payload``.
    """

    event: SecurityEvent
    count: int = 1
    window: float = 0.0
    summary: bool = False

    @property
    def level(self) -> Level:
        """``info`` or ``warning``, by kind."""
        return _KINDS[self.event.kind].level

    @property
    def message(self) -> str:
        """One sentence for people."""
        event = self.event
        if not self.summary:
            return f"{event.kind.value}: {event.detail}" if event.detail else event.kind.value
        who = " ".join(
            f"{name}={value}"
            for name, value in (
                ("ip", event.ip),
                ("username", event.username),
                ("client_id", event.client_id),
            )
            if value is not None
        )
        origin = f" from {who}" if who else ""
        return f"{event.kind.value}{origin} repeated {self.count} times in {self.window:g} s"

    @property
    def sys_topic(self) -> str:
        """``$SYS/security/<kind>``: readable by administrators only."""
        return SYS_SECURITY_PREFIX + self.event.kind.value

    def as_dict(self, ts: datetime | float) -> dict[str, object]:
        """The record's fields in their fixed order; absent ones are ``None``."""
        event = self.event
        return {
            "ts": _timestamp(ts),
            "level": self.level,
            "event": f"security.{event.kind.value}",
            "kind": event.kind.value,
            "message": self.message,
            "ip": event.ip,
            "username": event.username,
            "client_id": event.client_id,
            "topic": event.topic,
            "reason_code": event.reason_code,
            "detail": event.detail,
            "count": self.count,
            "window_s": self.window,
            "summary": self.summary,
        }

    def to_json(self, ts: datetime | float) -> str:
        """One JSON line (no newline), ASCII-only so no field can break the log or a terminal.

        ``ts`` is the wall-clock time of writing: an aware ``datetime`` or POSIX seconds.
        """
        return json.dumps(self.as_dict(ts), ensure_ascii=True, separators=(",", ":"))

    def sys_payload(self, ts: datetime | float) -> bytes:
        """The payload for ``sys_topic``: the same JSON object as the audit log line."""
        return self.to_json(ts).encode("ascii")


_Key = tuple[SecurityEventKind, int | None, str | None, str | None, str | None]


def _key(event: SecurityEvent) -> _Key:
    fields = _KINDS[event.kind].aggregate_by
    return (
        event.kind,
        event.reason_code,
        event.ip if "ip" in fields else None,
        event.username if "username" in fields else None,
        event.client_id if "client_id" in fields else None,
    )


def _summary_event(event: SecurityEvent) -> SecurityEvent:
    kind, reason_code, ip, username, client_id = _key(event)
    return SecurityEvent(
        kind, reason_code=reason_code, ip=ip, username=username, client_id=client_id
    )


class _Window:
    __slots__ = ("event", "repeats", "start")

    def __init__(self, event: SecurityEvent, start: float) -> None:
        self.event = event
        self.start = start
        self.repeats = 0


class AuditTrail:
    """Counts every event and turns them into audit records without flooding the log.

    The first event of a group (kind, reason code and the grouping fields of its kind) is
    written at once; repeats within ``window`` seconds are counted and written as one
    summary when the window ends. Open groups are bounded by ``max_groups``: when full, the
    oldest is closed early (its summary written) and ``evicted`` counts it. Call ``flush``
    by ``next_deadline()`` (or simply every second) and ``drain`` at shutdown.
    """

    __slots__ = ("_counts", "_open", "evicted", "max_groups", "window")

    def __init__(self, *, window: float = 10.0, max_groups: int = 10_000) -> None:
        if not window > 0:
            raise ConfigError(f"window must be positive, got {window!r}")
        if max_groups < 1:
            raise ConfigError(f"max_groups must be at least 1, got {max_groups!r}")
        self.window = window
        self.max_groups = max_groups
        self.evicted = 0
        self._counts: dict[SecurityEventKind, int] = dict.fromkeys(SecurityEventKind, 0)
        self._open: OrderedDict[_Key, _Window] = OrderedDict()  # oldest window first

    def counters(self) -> Mapping[str, int]:
        """Events seen per kind (every kind present), for metrics and ``$SYS/security/...``."""
        return {kind.value: n for kind, n in self._counts.items()}

    def record(self, event: SecurityEvent, now: float) -> list[AuditRecord]:
        """Take one event at ``now``; return the records to write now (possibly none)."""
        self._counts[event.kind] += 1
        event = _clipped(event)
        key = _key(event)
        out: list[AuditRecord] = []
        group = self._open.get(key)
        if group is not None:
            if now < group.start + self.window:
                group.repeats += 1
                return out
            del self._open[key]
            self._close(group, now, out)
        elif len(self._open) >= self.max_groups:
            _, oldest = self._open.popitem(last=False)
            self.evicted += 1
            self._close(oldest, now, out)
        self._open[key] = _Window(event, now)
        out.append(AuditRecord(event))
        return out

    def _close(self, group: _Window, now: float, out: list[AuditRecord]) -> None:
        if group.repeats:
            span = min(now - group.start, self.window)
            out.append(AuditRecord(_summary_event(group.event), group.repeats, span, True))

    def flush(self, now: float) -> list[AuditRecord]:
        """Close the groups whose window has ended; return their summaries."""
        out: list[AuditRecord] = []
        groups = self._open
        while groups:
            key = next(iter(groups))
            group = groups[key]
            if group.start + self.window > now:
                break
            del groups[key]
            self._close(group, now, out)
        return out

    def drain(self, now: float) -> list[AuditRecord]:
        """Close every group (at shutdown); return the summaries of those with repeats."""
        out: list[AuditRecord] = []
        while self._open:
            _, group = self._open.popitem(last=False)
            self._close(group, now, out)
        return out

    def next_deadline(self) -> float | None:
        """When ``flush`` next has a group to close; None when no group is open."""
        if not self._open:
            return None
        return self._open[next(iter(self._open))].start + self.window
