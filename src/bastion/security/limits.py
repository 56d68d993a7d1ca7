"""Rate limits, pure and clock-free: token buckets, per-client publish budgets, connection gate.

Every method takes ``now`` (monotonic seconds) from the caller; the transport turns answers
into actions (pause reads, disconnect, close). ``bans.py`` and ``audit.py`` sit beside it.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from bastion.errors import ConfigError
from bastion.mqtt.reason_codes import ReasonCode

__all__ = [
    "ADMITTED",
    "ALLOWED",
    "DEFAULT_GATE_LIMITS",
    "DEFAULT_PROFILE",
    "ClientRateLimiter",
    "ConnectionGate",
    "GateDecision",
    "GateLimits",
    "GateRefusal",
    "LimitProfile",
    "OverLimitAction",
    "RateDecision",
    "RateVerdict",
    "TokenBucket",
    "source_key",
]

_SLACK = 1e-9  # relative tolerance, so a take at ``now + delay_until_available(...)`` succeeds


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")


def _check_amount(amount: float) -> None:
    if not (math.isfinite(amount) and amount >= 0):
        raise ValueError(f"amount must be a finite number >= 0, got {amount!r}")


@functools.lru_cache(maxsize=4096)
def source_key(ip: str, ipv6_prefix: int = 64) -> str:
    """The key per-source limits and bans use for the address ``ip`` (no port).

    IPv4 addresses are their own key and IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``, as a
    dual-stack socket reports them) map to the IPv4 form. Other IPv6 addresses are grouped
    by their ``ipv6_prefix`` network (``2001:db8::/64``): one host owns a whole /64, so
    counting single addresses would let it rotate past every limit. Anything that is not an
    IP address (a Unix socket name, an already-computed key) is returned unchanged.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    mapped = address.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    if ipv6_prefix >= 128:
        return str(ipaddress.IPv6Address(int(address)))  # drops a %zone suffix
    shift = 128 - ipv6_prefix
    network = ipaddress.IPv6Address(int(address) >> shift << shift)
    return f"{network}/{ipv6_prefix}"


class TokenBucket:
    """A token bucket refilled lazily from the ``now`` each call brings: no timers.

    It starts full (``burst`` tokens) and gains ``rate`` tokens per second up to ``burst``.
    An amount larger than ``burst`` is taken only from a full bucket and leaves it in debt,
    so oversized items are slowed down rather than refused for ever. ``charge`` always takes
    (into debt if need be) and says how long until the debt is repaid. A clock that steps
    backwards adds nothing.
    """

    __slots__ = ("_burst", "_rate", "_slack", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float) -> None:
        _check_positive("rate", rate)
        _check_positive("burst", burst)
        self._rate = float(rate)
        self._burst = float(burst)
        self._slack = self._burst * _SLACK
        self._tokens = self._burst
        self._stamp: float | None = None

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self._rate

    @property
    def burst(self) -> float:
        """Capacity: the most tokens the bucket holds."""
        return self._burst

    def _refill(self, now: float) -> None:
        stamp = self._stamp
        if stamp is None:
            self._stamp = now
        elif now > stamp:
            tokens = self._tokens + (now - stamp) * self._rate
            self._tokens = tokens if tokens < self._burst else self._burst
            self._stamp = now

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now``; negative while in debt."""
        self._refill(now)
        return self._tokens

    def is_full(self, now: float) -> bool:
        """Whether the bucket is full, i.e. indistinguishable from a fresh one."""
        self._refill(now)
        return self._tokens >= self._burst - self._slack

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Take ``amount`` tokens if there are enough (``burst`` suffices for more); else none."""
        _check_amount(amount)
        self._refill(now)
        need = amount if amount < self._burst else self._burst
        if need - self._tokens <= self._slack:
            self._tokens -= amount
            return True
        return False

    def holds(self, now: float, amount: float) -> bool:
        """Whether ``amount`` tokens are in the bucket at ``now`` (takes nothing)."""
        self._refill(now)
        return self._tokens >= amount

    def spend(self, amount: float) -> None:
        """Take ``amount`` tokens ``holds`` just confirmed (same ``now``; no refill)."""
        self._tokens -= amount

    def delay_until_available(self, now: float, amount: float = 1.0) -> float:
        """Seconds from ``now`` until ``take(amount)`` would succeed; 0.0 if it would now."""
        _check_amount(amount)
        self._refill(now)
        need = amount if amount < self._burst else self._burst
        deficit = need - self._tokens
        if deficit <= self._slack:
            return 0.0
        stamp = now if self._stamp is None else self._stamp
        ready = stamp + deficit / self._rate
        # With a large ``now`` the sum above rounds; step up until the refill that ``take``
        # will compute at ``ready`` (the same float expression) really covers ``need``.
        for _ in range(64):
            refilled = min(self._burst, self._tokens + (ready - stamp) * self._rate)
            if need - refilled <= self._slack:
                break
            ready = math.nextafter(ready, math.inf)
        return ready - now

    def charge(self, now: float, amount: float) -> float:
        """Take ``amount`` unconditionally; return seconds until the bucket is out of debt."""
        _check_amount(amount)
        self._refill(now)
        self._tokens -= amount
        return -self._tokens / self._rate if self._tokens < -self._slack else 0.0

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self._rate!r}, burst={self._burst!r}, tokens={self._tokens!r})"


# --- per-client publish limits ------------------------------------------------------------


class OverLimitAction(Enum):
    """What happens to a client over its publish budget (the config's ``action`` string)."""

    THROTTLE = "throttle"  # the publish goes through; the caller stops reading for a while
    DISCONNECT = "disconnect"  # the publish is refused; the caller disconnects (0x96 / 0x97)


class RateVerdict(Enum):
    """The three answers of ``ClientRateLimiter.check_publish``."""

    ALLOW = "allow"
    THROTTLE = "throttle"
    EXCEED = "exceed"


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Answer for one publish.

    ``ALLOW``: go on. ``THROTTLE``: the publish is accepted and counted, but the caller must
    not read from the connection again for ``delay`` seconds. ``EXCEED``: the publish is
    refused and the client disconnected with ``reason``. For THROTTLE and EXCEED ``reason``
    names the budget that ran out: 0x96 Message rate too high (messages/s) or 0x97 Quota
    exceeded (bytes/s); it is also what the security event reports.
    """

    verdict: RateVerdict
    delay: float = 0.0
    reason: ReasonCode | None = None

    @property
    def allowed(self) -> bool:
        """True for ALLOW (the connection carries on unimpeded)."""
        return self.verdict is RateVerdict.ALLOW


ALLOWED = RateDecision(RateVerdict.ALLOW)


@dataclass(frozen=True, slots=True)
class LimitProfile:
    """One client's publish budget; the caller resolves per-user and per-group overrides.

    Defaults suit IoT devices, which publish a few messages a minute: 100 messages/s with a
    burst of 200, and 1 MiB/s with a burst of 2 MiB (one default-maximum packet fits twice).
    A rate of ``None`` switches that budget off; ``action`` says what over-budget means.
    """

    messages_per_second: float | None = 100.0
    burst_messages: float = 200.0
    bytes_per_second: float | None = 1_048_576.0
    burst_bytes: float = 2_097_152.0
    action: OverLimitAction = OverLimitAction.THROTTLE

    def __post_init__(self) -> None:
        if self.messages_per_second is not None:
            _check_positive("messages_per_second", self.messages_per_second)
        if self.bytes_per_second is not None:
            _check_positive("bytes_per_second", self.bytes_per_second)
        _check_positive("burst_messages", self.burst_messages)
        _check_positive("burst_bytes", self.burst_bytes)
        if self.burst_messages < 1:
            raise ConfigError(f"burst_messages must be at least 1, got {self.burst_messages!r}")


DEFAULT_PROFILE = LimitProfile()


class ClientRateLimiter:
    """Messages/s and bytes/s token buckets of one client connection.

    Throttling lets each publish through and charges it, possibly into debt; the publish
    that overdraws a bucket answers THROTTLE with the time the debt takes to repay, so a
    flooding client is paced at exactly its rate while the broker keeps no backlog for it.
    Disconnecting refuses a publish that either bucket cannot cover (and charges nothing).
    """

    __slots__ = ("_bytes", "_messages", "profile")

    def __init__(self, profile: LimitProfile = DEFAULT_PROFILE) -> None:
        self.profile = profile
        self._messages = (
            TokenBucket(profile.messages_per_second, profile.burst_messages)
            if profile.messages_per_second is not None
            else None
        )
        self._bytes = (
            TokenBucket(profile.bytes_per_second, profile.burst_bytes)
            if profile.bytes_per_second is not None
            else None
        )

    def take_batch(self, now: float, count: int, size: int) -> bool:
        """Charge ``count`` publishes of ``size`` bytes in all if both buckets cover them;
        else charge nothing and return False (the caller then asks ``check_publish`` one by
        one). Same outcome as ``count`` calls that would all have answered ALLOW."""
        messages, data = self._messages, self._bytes
        if messages is not None and not messages.holds(now, count):
            return False
        if data is not None and not data.holds(now, size):
            return False
        if messages is not None:
            messages.spend(count)
        if data is not None:
            data.spend(size)
        return True

    def check_publish(self, now: float, size: int) -> RateDecision:
        """Account for one inbound publish of ``size`` bytes (the whole packet) at ``now``."""
        if self.profile.action is OverLimitAction.DISCONNECT:
            return self._refuse_over_budget(now, size)
        message_delay = self._messages.charge(now, 1.0) if self._messages is not None else 0.0
        byte_delay = self._bytes.charge(now, size) if self._bytes is not None else 0.0
        if message_delay == 0.0 and byte_delay == 0.0:
            return ALLOWED
        if message_delay >= byte_delay:
            return RateDecision(
                RateVerdict.THROTTLE, message_delay, ReasonCode.MESSAGE_RATE_TOO_HIGH
            )
        return RateDecision(RateVerdict.THROTTLE, byte_delay, ReasonCode.QUOTA_EXCEEDED)

    def _refuse_over_budget(self, now: float, size: int) -> RateDecision:
        messages, data = self._messages, self._bytes
        if messages is not None and messages.delay_until_available(now, 1.0) > 0.0:
            return RateDecision(RateVerdict.EXCEED, reason=ReasonCode.MESSAGE_RATE_TOO_HIGH)
        if data is not None and data.delay_until_available(now, size) > 0.0:
            return RateDecision(RateVerdict.EXCEED, reason=ReasonCode.QUOTA_EXCEEDED)
        if messages is not None:
            messages.take(now, 1.0)
        if data is not None:
            data.take(now, size)
        return ALLOWED

    def resume_after(self, now: float) -> float:
        """Seconds until neither bucket is in debt: when a paused connection may read again."""
        buckets = (self._messages, self._bytes)
        delays = [b.charge(now, 0.0) for b in buckets if b is not None]  # charging 0 just asks
        return max(delays, default=0.0)


# --- connection admission -------------------------------------------------------------------


class GateRefusal(Enum):
    """Which connection cap refused a new connection."""

    GLOBAL_CONNECTIONS = "global_connections"
    IP_CONNECTIONS = "ip_connections"
    IP_CONNECTION_RATE = "ip_connection_rate"

    @property
    def reason_code(self) -> ReasonCode:
        """The CONNACK reason for MQTT 5 clients, should the caller read their CONNECT."""
        return _GATE_REASONS[self]


_GATE_REASONS = MappingProxyType(
    {
        GateRefusal.GLOBAL_CONNECTIONS: ReasonCode.SERVER_BUSY,
        GateRefusal.IP_CONNECTIONS: ReasonCode.QUOTA_EXCEEDED,
        GateRefusal.IP_CONNECTION_RATE: ReasonCode.CONNECTION_RATE_EXCEEDED,
    }
)


@dataclass(frozen=True, slots=True)
class GateDecision:
    """Answer of ``ConnectionGate.admit``: admitted, or refused by ``refusal``.

    ``retry_after`` is set for a rate refusal: seconds until this source may connect again.
    """

    refusal: GateRefusal | None = None
    retry_after: float = 0.0

    @property
    def admitted(self) -> bool:
        """True when the connection may proceed (and must later be ``release``d)."""
        return self.refusal is None


ADMITTED = GateDecision()


@dataclass(frozen=True, slots=True)
class GateLimits:
    """Connection caps. Defaults: 20 new connections/s per source (burst 40), 100 concurrent
    per source, 100,000 in all, and memory of at most 100,000 idle sources.

    A source is an IPv4 address or an IPv6 /``ipv6_prefix`` network (see ``source_key``).
    """

    connections_per_second_per_ip: float = 20.0
    connection_burst_per_ip: float = 40.0
    max_connections_per_ip: int = 100
    max_connections: int = 100_000
    max_idle_ips: int = 100_000
    ipv6_prefix: int = 64

    def __post_init__(self) -> None:
        _check_positive("connections_per_second_per_ip", self.connections_per_second_per_ip)
        _check_positive("connection_burst_per_ip", self.connection_burst_per_ip)
        if self.connection_burst_per_ip < 1:
            raise ConfigError("connection_burst_per_ip must be at least 1")
        for name in ("max_connections_per_ip", "max_connections", "max_idle_ips"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not 1 <= self.ipv6_prefix <= 128:
            raise ConfigError(f"ipv6_prefix must be 1..128, got {self.ipv6_prefix!r}")


DEFAULT_GATE_LIMITS = GateLimits()


class _Source:
    """What the gate remembers of one source: its connection-rate bucket and open count."""

    __slots__ = ("active", "bucket")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.active = 0


class ConnectionGate:
    """Admits or refuses new connections by per-source rate, per-source and global caps.

    Every attempt from a source costs one token of its bucket, admitted or not. Sources with
    open connections are always remembered (there are at most ``max_connections``); idle
    ones sit in an LRU table of at most ``max_idle_ips`` and ``sweep`` drops those whose
    bucket has refilled, which forgets nothing. Call ``release`` once per admitted connection.
    """

    __slots__ = ("_busy", "_idle", "_total", "limits")

    def __init__(self, limits: GateLimits = DEFAULT_GATE_LIMITS) -> None:
        self.limits = limits
        self._busy: dict[str, _Source] = {}
        self._idle: OrderedDict[str, _Source] = OrderedDict()
        self._total = 0

    @property
    def active_connections(self) -> int:
        """Connections admitted and not yet released."""
        return self._total

    @property
    def tracked_sources(self) -> int:
        """Sources the gate currently remembers (busy and idle)."""
        return len(self._busy) + len(self._idle)

    def connections_from(self, ip: str) -> int:
        """Open connections from the source of ``ip``."""
        source = self._busy.get(source_key(ip, self.limits.ipv6_prefix))
        return source.active if source is not None else 0

    def admit(self, ip: str, now: float) -> GateDecision:
        """Decide on a new connection from ``ip`` at ``now``; count it if admitted."""
        limits = self.limits
        if self._total >= limits.max_connections:
            return GateDecision(GateRefusal.GLOBAL_CONNECTIONS)
        key = source_key(ip, limits.ipv6_prefix)
        source = self._busy.get(key)
        if source is None:
            source = self._idle.pop(key, None)
            if source is None:
                source = _Source(
                    TokenBucket(
                        limits.connections_per_second_per_ip, limits.connection_burst_per_ip
                    )
                )
        if not source.bucket.take(now):
            decision = GateDecision(
                GateRefusal.IP_CONNECTION_RATE, source.bucket.delay_until_available(now)
            )
        elif source.active >= limits.max_connections_per_ip:
            decision = GateDecision(GateRefusal.IP_CONNECTIONS)
        else:
            source.active += 1
            self._total += 1
            decision = ADMITTED
        if source.active:
            self._busy[key] = source
        else:
            self._remember_idle(key, source)
        return decision

    def release(self, ip: str) -> None:
        """A connection admitted from ``ip`` has closed. Unknown sources are ignored."""
        key = source_key(ip, self.limits.ipv6_prefix)
        source = self._busy.get(key)
        if source is None:
            return
        source.active -= 1
        self._total -= 1
        if not source.active:
            del self._busy[key]
            self._remember_idle(key, source)

    def _remember_idle(self, key: str, source: _Source) -> None:
        idle = self._idle
        idle[key] = source
        idle.move_to_end(key)
        while len(idle) > self.limits.max_idle_ips:
            idle.popitem(last=False)

    def sweep(self, now: float) -> int:
        """Forget idle sources whose bucket is full again, oldest first; return how many.

        Stops at the first idle source that is not yet full, so one call costs O(forgotten);
        a source skipped that way is full, and forgotten, at most one burst later.
        """
        idle = self._idle
        forgotten = 0
        while idle:
            key = next(iter(idle))
            if not idle[key].bucket.is_full(now):
                break
            del idle[key]
            forgotten += 1
        return forgotten
