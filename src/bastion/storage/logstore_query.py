"""What the logger's readers ask for: MQTT topic filters, a time window and a limit.

``LogQuery`` is handed to a backend (``logstore_rows.LogBackend.scan``), which pre-filters
on literal topic prefixes; ``logstore.LogStore`` matches the filters exactly. The CLI
(``cli/logger.py``) parses ``--topic``, ``--since`` and ``--until`` with the functions here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bastion.errors import ProtocolError
from bastion.mqtt.topics import topic_matches, validate_topic_filter

__all__ = ["LogQuery", "parse_instant", "parse_topic_filter"]

_DURATION = re.compile(r"(\d{1,9})\s*(s|m|h|d|w)", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_instant(text: str, now: datetime) -> datetime:
    """A point in time from ``30s``/``15m``/``1h``/``7d``/``2w`` (that long before ``now``) or
    an RFC 3339 timestamp with an offset (``2026-05-01T12:00:00Z``); ValueError otherwise."""
    value = text.strip()
    match = _DURATION.fullmatch(value)
    if match is not None:
        return now - timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30s, 15m, 1h, 7d) nor an RFC 3339 timestamp"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset: add Z or +hh:mm")
    return when.astimezone(UTC)


def parse_topic_filter(text: str) -> str:
    """``text`` if it is a valid MQTT topic filter (``+`` and ``#`` allowed), else ValueError."""
    if text.startswith("$share/"):
        raise ValueError(f"topic filter {text!r}: shared subscriptions make no sense here")
    try:
        validate_topic_filter(text)
    except ProtocolError as error:
        raise ValueError(f"topic filter {text!r}: {error.message}") from None
    return text


def _literal_prefix(topic_filter: str) -> str:
    """The text every matching topic starts with (up to the first wildcard level)."""
    levels: list[str] = []
    for level in topic_filter.split("/"):
        if level in ("+", "#"):
            if level == "#" and levels:
                return "/".join(levels)  # 'a/#' also matches the parent 'a' itself
            return "/".join(levels) + "/" if levels else ""
        levels.append(level)
    return topic_filter


@dataclass(frozen=True, slots=True)
class LogQuery:
    """Which messages to read: any of ``topics`` (MQTT filters; none = all), in
    ``[since, until]``, at most ``limit`` (the newest ones) or all (None)."""

    topics: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None

    def prefixes(self) -> tuple[str, ...] | None:
        """Literal topic prefixes a backend may pre-filter on (None: no pre-filter)."""
        prefixes = tuple(_literal_prefix(topic_filter) for topic_filter in self.topics)
        return None if not prefixes or "" in prefixes else prefixes

    def matches(self, topic: str) -> bool:
        return not self.topics or any(topic_matches(f, topic) for f in self.topics)
