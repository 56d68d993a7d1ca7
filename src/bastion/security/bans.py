"""Temporary bans and the detectors that impose them: brute-force back-off and reconnect storms.

Pure and clock-free like ``limits.py`` (every call takes ``now``, monotonic seconds); the
caller delays CONNACKs, refuses banned clients and turns returned ``Ban``s into audit events.
"""

from __future__ import annotations

import heapq
import math
from array import array
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from itertools import count

from bastion.errors import ConfigError
from bastion.security.limits import source_key

__all__ = [
    "DEFAULT_AUTH_BACKOFF",
    "DEFAULT_FLAP_LIMITS",
    "AuthBackoff",
    "AuthFailureTracker",
    "Ban",
    "BanKind",
    "BanList",
    "EventWindow",
    "FailureOutcome",
    "FlapDetector",
    "FlapLimits",
]


_NEVER = -math.inf  # a time before every ``now``


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")


def _check_at_least_one(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value!r}")


class BanKind(Enum):
    """What a ban names."""

    IP = "ip"
    USERNAME = "username"
    CLIENT_ID = "client_id"


@dataclass(frozen=True, slots=True)
class Ban:
    """A temporary ban: ``key`` of ``kind`` may not connect until ``until`` (monotonic s).

    An IP ban's ``key`` is a source key (``limits.source_key``): an IPv4 address or an IPv6
    network. ``reason`` is a short text for logs and the audit trail.
    """

    kind: BanKind
    key: str
    until: float
    reason: str


class BanList:
    """Temporary bans by IP, username or client id, at most ``max_entries`` of them.

    Bans are indexed by expiry, so ``sweep`` costs O(expired) and, when the list is full, the
    ban that would end first is the one dropped (an attacker who provokes bans from many
    addresses pushes out short automatic bans before an operator's long ones).
    """

    __slots__ = ("_bans", "_heap", "_seq", "evicted", "ipv6_prefix", "max_entries")

    def __init__(self, *, max_entries: int = 100_000, ipv6_prefix: int = 64) -> None:
        _check_at_least_one("max_entries", max_entries)
        if not 1 <= ipv6_prefix <= 128:
            raise ConfigError(f"ipv6_prefix must be 1..128, got {ipv6_prefix!r}")
        self.max_entries = max_entries
        self.ipv6_prefix = ipv6_prefix
        self.evicted = 0  # bans dropped because the list was full
        self._bans: dict[tuple[BanKind, str], Ban] = {}
        self._heap: list[tuple[float, int, Ban]] = []  # lazy: stale rows are skipped
        self._seq = count()

    def __len__(self) -> int:
        return len(self._bans)

    def source_key(self, ip: str) -> str:
        """The key an IP ban on ``ip`` is stored under (shared with the detectors below)."""
        return source_key(ip, self.ipv6_prefix)

    def _key(self, kind: BanKind, key: str) -> tuple[BanKind, str]:
        return (kind, self.source_key(key) if kind is BanKind.IP else key)

    def ban(self, kind: BanKind, key: str, until: float, reason: str) -> Ban:
        """Ban ``key`` until ``until``; an existing ban that ends later is kept instead.

        Returns the ban in force for that key afterwards. (To shorten a ban, ``unban`` first.)
        """
        slot = self._key(kind, key)
        current = self._bans.get(slot)
        if current is not None and current.until >= until:
            return current
        new = Ban(kind, slot[1], until, reason)
        if current is None and len(self._bans) >= self.max_entries:
            self._evict_soonest()
        self._bans[slot] = new
        heapq.heappush(self._heap, (until, next(self._seq), new))
        self._compact()
        return new

    def unban(self, kind: BanKind, key: str) -> Ban | None:
        """Lift the ban on ``key`` (returned), if there is one."""
        removed = self._bans.pop(self._key(kind, key), None)
        self._compact()
        return removed

    def get(self, kind: BanKind, key: str, now: float) -> Ban | None:
        """The ban in force on ``key`` at ``now``, if any."""
        ban = self._bans.get(self._key(kind, key))
        return ban if ban is not None and ban.until > now else None

    def is_banned(
        self,
        *,
        ip: str | None = None,
        username: str | None = None,
        client_id: str | None = None,
        now: float,
    ) -> Ban | None:
        """The first ban in force at ``now`` on ``ip``, then ``username``, then ``client_id``."""
        for kind, key in (
            (BanKind.IP, ip),
            (BanKind.USERNAME, username),
            (BanKind.CLIENT_ID, client_id),
        ):
            if key is not None:
                ban = self.get(kind, key, now)
                if ban is not None:
                    return ban
        return None

    def active(self, now: float) -> list[Ban]:
        """Bans in force at ``now``, soonest to end first."""
        return sorted(
            (ban for ban in self._bans.values() if ban.until > now),
            key=lambda ban: (ban.until, ban.kind.value, ban.key),
        )

    def sweep(self, now: float) -> list[Ban]:
        """Remove the bans that have ended by ``now`` and return them (for "ban lifted" events)."""
        ended: list[Ban] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, ban = heapq.heappop(heap)
            slot = (ban.kind, ban.key)
            if self._bans.get(slot) is ban:
                del self._bans[slot]
                ended.append(ban)
        return ended

    def _evict_soonest(self) -> None:
        heap = self._heap
        while heap:
            _, _, ban = heapq.heappop(heap)
            slot = (ban.kind, ban.key)
            if self._bans.get(slot) is ban:
                del self._bans[slot]
                self.evicted += 1
                return

    def _compact(self) -> None:
        """Rebuild the heap when stale rows (extended or lifted bans) outnumber live ones."""
        if len(self._heap) > 2 * len(self._bans) + 16:
            self._heap = [
                row for row in self._heap if self._bans.get((row[2].kind, row[2].key)) is row[2]
            ]
            heapq.heapify(self._heap)


class EventWindow:
    """Times of the recent events of one key, at most ``capacity`` of them (8 bytes each).

    Answers "how many events in the last ``window`` seconds", exactly up to ``capacity``,
    which is all a threshold of ``capacity`` needs. Events that have left the window are
    dropped as new ones arrive, so a key seen once costs one slot, not ``capacity``.
    """

    __slots__ = ("_capacity", "_times")

    def __init__(self, capacity: int) -> None:
        _check_at_least_one("capacity", capacity)
        self._capacity = capacity
        self._times = array("d")

    def __len__(self) -> int:
        return len(self._times)

    def add(self, now: float, window: float) -> None:
        """Record an event at ``now``, dropping those at or before ``now - window`` and the
        oldest beyond ``capacity``."""
        times = self._times
        cutoff = now - window
        stale = 0
        while stale < len(times) and times[stale] <= cutoff:
            stale += 1
        stale = max(stale, len(times) + 1 - self._capacity)
        if stale:
            del times[:stale]
        times.append(now)

    def latest(self) -> float:
        """Time of the newest event (``-inf`` when there is none)."""
        return self._times[-1] if self._times else -math.inf

    def count(self, now: float, window: float) -> int:
        """Events remembered that happened after ``now - window``."""
        times = self._times  # ascending: events are added with the time they happened
        return len(times) - bisect_right(times, now - window)

    def clear(self) -> None:
        """Forget every event."""
        del self._times[:]


# --- brute-force defence -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthBackoff:
    """Brute-force defence settings.

    After the n-th failure within ``window`` seconds a source IP or username waits
    ``initial_delay * multiplier**(n-1)`` seconds, at most ``max_delay``, for its next
    CONNACK (defaults: 0.5, 1, 2, 4, 8, 16, 30, 30 … s). ``ban_after`` failures within
    ``window`` ban it for ``ban_duration`` seconds (default: 10 failures in 10 minutes →
    15 minutes). ``ban_usernames`` can be turned off where locking an account out by
    guessing its password is worse than a slower brute force; its back-off still applies.
    """

    initial_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 30.0
    ban_after: int = 10
    window: float = 600.0
    ban_duration: float = 900.0
    ban_usernames: bool = True
    max_tracked: int = 100_000  # per table (IPs, usernames); least recently failed dropped

    def __post_init__(self) -> None:
        for name in ("initial_delay", "max_delay", "window", "ban_duration"):
            _check_positive(name, getattr(self, name))
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise ConfigError(f"multiplier must be a finite number >= 1, got {self.multiplier!r}")
        if self.max_delay < self.initial_delay:
            raise ConfigError("max_delay must be at least initial_delay")
        _check_at_least_one("ban_after", self.ban_after)
        _check_at_least_one("max_tracked", self.max_tracked)

    def delay_for(self, failures: int) -> float:
        """CONNACK delay after ``failures`` recent failures (0.0 for none)."""
        if failures <= 0:
            return 0.0
        steps = failures - 1
        ceiling = math.log(self.max_delay / self.initial_delay)
        if self.multiplier > 1 and steps * math.log(self.multiplier) >= ceiling:
            return self.max_delay  # also keeps multiplier**steps from overflowing
        return min(self.max_delay, self.initial_delay * self.multiplier**steps)


DEFAULT_AUTH_BACKOFF = AuthBackoff()


@dataclass(frozen=True, slots=True)
class FailureOutcome:
    """Result of one authentication failure.

    ``delay``: seconds to hold this attempt's CONNACK back. ``banned_until``: end of the ban
    now in force on the IP or username, if any. ``new_bans``: bans this failure imposed
    (each deserves a security event).
    """

    delay: float
    banned_until: float | None = None
    new_bans: tuple[Ban, ...] = ()


class _Failures(EventWindow):
    """An IP's or username's recent failures, and when its current back-off ends."""

    __slots__ = ("blocked_until",)

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.blocked_until = _NEVER


class AuthFailureTracker:
    """Exponential CONNACK back-off and temporary bans after failed authentications.

    Tracked per source IP and per username, each in a bounded LRU table. Intended flow for
    a CONNECT: refuse it if ``bans.is_banned``; note ``wait = connack_delay(...)``;
    authenticate; on failure hold the CONNACK ``max(wait, outcome.delay)``, on success
    ``wait``, then ``record_success``. A success clears the username's record and the
    IP's pending back-off but not the IP's failure count: otherwise one valid credential
    would let an attacker reset the count between guesses.
    """

    __slots__ = ("_by_ip", "_by_username", "bans", "settings")

    def __init__(self, bans: BanList, settings: AuthBackoff = DEFAULT_AUTH_BACKOFF) -> None:
        self.bans = bans
        self.settings = settings
        self._by_ip: OrderedDict[str, _Failures] = OrderedDict()
        self._by_username: OrderedDict[str, _Failures] = OrderedDict()

    @property
    def tracked(self) -> tuple[int, int]:
        """How many IPs and usernames have a failure record."""
        return len(self._by_ip), len(self._by_username)

    def failures(self, now: float, *, ip: str | None = None, username: str | None = None) -> int:
        """Recent failures (within the window) of ``ip`` or else ``username``."""
        if ip is not None:
            record = self._by_ip.get(self.bans.source_key(ip))
        elif username is not None:
            record = self._by_username.get(username)
        else:
            return 0
        return record.count(now, self.settings.window) if record is not None else 0

    def record_failure(self, ip: str, username: str | None, now: float) -> FailureOutcome:
        """Count a failed authentication from ``ip`` (and ``username`` when one was given)."""
        new_bans: list[Ban] = []
        blocked = self._fail(self._by_ip, BanKind.IP, self.bans.source_key(ip), now, new_bans)
        if username is not None:
            blocked = max(
                blocked, self._fail(self._by_username, BanKind.USERNAME, username, now, new_bans)
            )
        ban = self.bans.is_banned(ip=ip, username=username, now=now)
        banned_until = max([b.until for b in new_bans] + ([ban.until] if ban else []), default=None)
        return FailureOutcome(max(0.0, blocked - now), banned_until, tuple(new_bans))

    def _fail(
        self,
        table: OrderedDict[str, _Failures],
        kind: BanKind,
        key: str,
        now: float,
        new_bans: list[Ban],
    ) -> float:
        settings = self.settings
        record = table.get(key)
        if record is None:
            record = table[key] = _Failures(settings.ban_after)
            while len(table) > settings.max_tracked:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        record.add(now, settings.window)
        recent = record.count(now, settings.window)
        record.blocked_until = max(record.blocked_until, now + settings.delay_for(recent))
        if recent >= settings.ban_after and (kind is BanKind.IP or settings.ban_usernames):
            reason = f"{recent} authentication failures in {settings.window:g} s"
            new_bans.append(self.bans.ban(kind, key, now + settings.ban_duration, reason))
            record.clear()
        return record.blocked_until

    def record_success(self, ip: str, username: str | None) -> None:
        """An authentication from ``ip`` / ``username`` succeeded."""
        record = self._by_ip.get(self.bans.source_key(ip))
        if record is not None:
            record.blocked_until = _NEVER
        if username is not None:
            self._by_username.pop(username, None)

    def connack_delay(self, ip: str, username: str | None, now: float) -> float:
        """Seconds of back-off still owed by ``ip`` or ``username`` at ``now`` (0.0 if none)."""
        blocked = _NEVER
        record = self._by_ip.get(self.bans.source_key(ip))
        if record is not None:
            blocked = record.blocked_until
        if username is not None:
            record = self._by_username.get(username)
            if record is not None:
                blocked = max(blocked, record.blocked_until)
        return max(0.0, blocked - now)

    def sweep(self, now: float) -> int:
        """Drop records with no failure in the window and no back-off left; return how many."""
        settings = self.settings
        horizon = max(settings.window, settings.max_delay)
        dropped = 0
        for table in (self._by_ip, self._by_username):
            while table:
                record = table[next(iter(table))]
                if record.latest() + horizon > now or record.blocked_until > now:
                    break
                table.popitem(last=False)
                dropped += 1
        return dropped


# --- reconnect storms ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlapLimits:
    """Reconnect-storm ("flapping") detection.

    More than ``max_connects_per_client`` CONNECTs with one client id, or more than
    ``max_connects_per_ip`` from one source, within ``window`` seconds bans that client id
    or source for ``ban_duration`` seconds. Defaults: 20 per client id and 100 per source in
    60 s, 5-minute ban (a source is often a NAT gateway for many devices, hence the higher
    count; ``ConnectionGate`` already caps short bursts).
    """

    max_connects_per_client: int = 20
    max_connects_per_ip: int = 100
    window: float = 60.0
    ban_duration: float = 300.0
    max_tracked: int = 100_000  # per table (client ids, sources)

    def __post_init__(self) -> None:
        _check_positive("window", self.window)
        _check_positive("ban_duration", self.ban_duration)
        _check_at_least_one("max_connects_per_client", self.max_connects_per_client)
        _check_at_least_one("max_connects_per_ip", self.max_connects_per_ip)
        _check_at_least_one("max_tracked", self.max_tracked)


DEFAULT_FLAP_LIMITS = FlapLimits()


class FlapDetector:
    """Counts CONNECTs per client id and per source; bans the ones that reconnect too often.

    Call ``record_connect`` for each CONNECT that passed the ban check. Memory: one ring of
    timestamps per key in two LRU tables of at most ``max_tracked`` keys each.
    """

    __slots__ = ("_by_client", "_by_ip", "bans", "limits")

    def __init__(self, bans: BanList, limits: FlapLimits = DEFAULT_FLAP_LIMITS) -> None:
        self.bans = bans
        self.limits = limits
        self._by_client: OrderedDict[str, EventWindow] = OrderedDict()
        self._by_ip: OrderedDict[str, EventWindow] = OrderedDict()

    @property
    def tracked(self) -> tuple[int, int]:
        """How many client ids and sources are being counted."""
        return len(self._by_client), len(self._by_ip)

    def record_connect(self, client_id: str | None, ip: str, now: float) -> tuple[Ban, ...]:
        """Count a CONNECT; return the bans it triggered (none, or the client id and/or IP).

        An empty or missing ``client_id`` (one the server assigns) is not counted by id.
        """
        limits = self.limits
        bans: list[Ban] = []
        if client_id:
            ban = self._count(
                self._by_client, BanKind.CLIENT_ID, client_id, limits.max_connects_per_client, now
            )
            if ban is not None:
                bans.append(ban)
        ban = self._count(
            self._by_ip, BanKind.IP, self.bans.source_key(ip), limits.max_connects_per_ip, now
        )
        if ban is not None:
            bans.append(ban)
        return tuple(bans)

    def _count(
        self,
        table: OrderedDict[str, EventWindow],
        kind: BanKind,
        key: str,
        allowed: int,
        now: float,
    ) -> Ban | None:
        limits = self.limits
        times = table.get(key)
        if times is None:
            times = table[key] = EventWindow(allowed + 1)
            while len(table) > limits.max_tracked:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        times.add(now, limits.window)
        seen = times.count(now, limits.window)
        if seen > allowed:
            reason = f"more than {allowed} connections in {limits.window:g} s"
            times.clear()
            return self.bans.ban(kind, key, now + limits.ban_duration, reason)
        return None

    def sweep(self, now: float) -> int:
        """Forget keys with no CONNECT in the window; return how many."""
        window = self.limits.window
        dropped = 0
        for table in (self._by_client, self._by_ip):
            while table:
                if table[next(iter(table))].latest() + window > now:
                    break
                table.popitem(last=False)
                dropped += 1
        return dropped
