"""Counting, logging and reporting the defences the core applies, once per episode.

Every hit of a ``Defence`` is counted in ``BrokerStats``; the log line and the
``security.audit.SecurityEvent`` for the audit sink come once when an episode starts (a
client starts breaking a rule, a queue starts overflowing), a summary line when it ends.
``core.py``, ``inbound.py`` and ``delivery.py`` call it; the runtime plugs the audit trail
in through ``Broker.on_security_event``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final, Protocol

import structlog

from bastion.broker.stats import BrokerStats, Defence
from bastion.security.audit import SecurityEvent, SecurityEventKind
from bastion.security.policy import ClientIdentity
from bastion.security.validation import Rule

log = structlog.get_logger("bastion.security")

SecurityEventSink = Callable[[SecurityEvent, float], object]
"""Takes each security event with the broker's ``now`` (``AuditTrail.record`` fits).

Called synchronously on the broker's path: it must be quick; an exception is logged and
ignored.
"""

_D = Defence
_A = SecurityEventKind

# The audit kind each defence is reported as.
AUDIT_KIND: Final[Mapping[Defence, SecurityEventKind]] = MappingProxyType(
    {
        _D.PROTOCOL_VIOLATION: _A.PROTOCOL_VIOLATION,
        _D.INVALID_UTF8: _A.INVALID_UTF8,
        _D.PAYLOAD_FORMAT_INVALID: _A.PAYLOAD_INVALID,
        _D.TOPIC_LIMIT: _A.LIMIT_EXCEEDED,
        _D.FILTER_LIMIT: _A.LIMIT_EXCEEDED,
        _D.MESSAGE_SIZE: _A.LIMIT_EXCEEDED,
        _D.SUBSCRIPTION_QUOTA: _A.LIMIT_EXCEEDED,
        _D.AWAITING_REL_QUOTA: _A.LIMIT_EXCEEDED,
        _D.AWAITING_REL_TIMEOUT: _A.LIMIT_EXCEEDED,
        _D.QUEUE_FULL: _A.LIMIT_EXCEEDED,
        _D.REDELIVERY_EXHAUSTED: _A.REDELIVERY_LIMIT,
        _D.ACL_DENIED: _A.ACL_DENIED,
    }
)

# The defence that a content rule of ``security.validation`` stands for.
DEFENCE_OF_RULE: Final[Mapping[Rule, Defence]] = MappingProxyType(
    {
        Rule.TOPIC_LIMIT: _D.TOPIC_LIMIT,
        Rule.FILTER_LIMIT: _D.FILTER_LIMIT,
        Rule.MESSAGE_SIZE: _D.MESSAGE_SIZE,
        Rule.PAYLOAD_FORMAT: _D.PAYLOAD_FORMAT_INVALID,
    }
)

# Episodes of these last while the session's condition lasts, across connections; the
# others are a client's misbehaviour and end with its network connection.
_SESSION_SCOPED: Final = frozenset({_D.QUEUE_FULL})
_CONNECTION_SCOPED: Final = tuple(d for d in Defence if d not in _SESSION_SCOPED)
_MAX_TOPIC_CHARS: Final = 256  # topics in log lines are clipped: attacker-sized


class EventLogger(Protocol):
    """The part of a structlog logger this module uses (tests pass a recorder)."""

    def info(self, event: str, **fields: object) -> object: ...
    def warning(self, event: str, **fields: object) -> object: ...
    def exception(self, event: str, **fields: object) -> object: ...


def peer_ip(peer: str) -> str:
    """The address part of ``host:port`` or ``[v6]:port``."""
    if peer.startswith("["):
        return peer[1 : peer.find("]")] if "]" in peer else peer
    host, colon, _ = peer.rpartition(":")
    return host if colon and ":" not in host else peer


class SecurityLog:
    """Counts every hit; logs and reports the first of each episode, summarises its end."""

    def __init__(self, stats: BrokerStats, sink: Callable[[], SecurityEventSink | None]) -> None:
        self._stats = stats
        self._sink = sink  # read at each event: the runtime may plug one in later
        self._episodes: dict[tuple[Defence, str], int] = {}
        self.logger: EventLogger = log

    def hit(
        self,
        defence: Defence,
        identity: ClientIdentity,
        now: float,
        *,
        reason: int | None = None,
        detail: str = "",
        topic: str | None = None,
    ) -> bool:
        """Count one hit of ``defence`` by this client; True if it started a new episode."""
        self._stats.count(defence)
        key = (defence, identity.client_id)
        seen = self._episodes.get(key)
        if seen is not None:
            self._episodes[key] = seen + 1
            return False
        self._episodes[key] = 1
        self._emit(defence, identity, None, now, reason, detail, topic, 1)
        return True

    def report(
        self,
        defence: Defence,
        identity: ClientIdentity | None,
        now: float,
        *,
        peer: str | None = None,
        reason: int | None = None,
        detail: str = "",
        topic: str | None = None,
        count: int = 1,
    ) -> None:
        """Count, log and report an event that is one per occasion (or already aggregated)."""
        self._stats.count(defence, count)
        self._emit(defence, identity, peer, now, reason, detail, topic, count)

    def end(self, defence: Defence, client_id: str) -> None:
        """The episode of ``defence`` for this client is over (its condition cleared)."""
        hits = self._episodes.pop((defence, client_id), None)
        if hits is not None and hits > 1:
            self.logger.info(
                "security.episode_ended", defence=defence.value, client_id=client_id, hits=hits
            )

    def end_connection(self, client_id: str) -> None:
        """The client's network connection ended: so did its misbehaviour episodes."""
        if self._episodes:
            for defence in _CONNECTION_SCOPED:
                self.end(defence, client_id)

    def end_session(self, client_id: str) -> None:
        """The client's session ended: every episode of it is over."""
        if self._episodes:
            for defence in Defence:
                self.end(defence, client_id)

    def active(self, defence: Defence, client_id: str) -> bool:
        """True while an episode of ``defence`` runs for this client."""
        return (defence, client_id) in self._episodes

    def _emit(  # noqa: PLR0917 - one event's fields, private
        self,
        defence: Defence,
        identity: ClientIdentity | None,
        peer: str | None,
        now: float,
        reason: int | None,
        detail: str,
        topic: str | None,
        count: int,
    ) -> None:
        if identity is not None:
            peer = identity.peer
        client_id = None if identity is None else identity.client_id
        username = None if identity is None else identity.username
        if topic is not None and len(topic) > _MAX_TOPIC_CHARS:
            topic = topic[:_MAX_TOPIC_CHARS] + "..."
        self.logger.warning(
            "security." + defence.value,
            client_id=client_id,
            username=username,
            peer=peer,
            reason=None if reason is None else f"0x{reason:02X}",
            detail=detail,
            topic=topic,
            count=count,
        )
        sink = self._sink()
        if sink is None:
            return
        event = SecurityEvent(
            AUDIT_KIND[defence],
            detail=f"{defence.value}: {detail}" if detail else defence.value,
            client_id=client_id,
            username=username,
            ip=None if peer is None else peer_ip(peer),
            reason_code=reason,
            topic=topic,
        )
        try:
            sink(event, now)
        except Exception:  # an observer must never break the broker
            self.logger.exception("security.sink_failed", defence=defence.value)


__all__ = [
    "AUDIT_KIND",
    "DEFENCE_OF_RULE",
    "EventLogger",
    "SecurityEventSink",
    "SecurityLog",
    "peer_ip",
]
