"""The per-process abuse defences, assembled from the ``[limits]`` settings.

One ``Defences`` value holds the connection gate, the ban list, the brute-force tracker,
the reconnect-storm detector and the publish budgets; the transport consults it for every
connection. The pieces themselves live in ``limits.py`` and ``bans.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bastion.config.schema import LimitsSettings, RateLimitSettings
from bastion.security.audit import SecurityEvent
from bastion.security.bans import AuthBackoff, AuthFailureTracker, BanList, FlapDetector, FlapLimits
from bastion.security.limits import ConnectionGate, GateLimits, LimitProfile, OverLimitAction


def limit_profile(settings: RateLimitSettings) -> LimitProfile:
    return LimitProfile(
        messages_per_second=settings.messages_per_second,
        burst_messages=settings.burst_messages,
        bytes_per_second=settings.bytes_per_second,
        burst_bytes=settings.burst_bytes,
        action=OverLimitAction(settings.action),
    )


@dataclass
class Defences:
    """Per-process abuse defences shared by every listener."""

    gate: ConnectionGate
    bans: BanList
    auth_failures: AuthFailureTracker
    flaps: FlapDetector
    default_profile: LimitProfile
    user_profiles: dict[str, LimitProfile] = field(default_factory=dict)

    def profile_for(self, username: str | None) -> LimitProfile:
        if username is not None:
            profile = self.user_profiles.get(username)
            if profile is not None:
                return profile
        return self.default_profile

    def sweep(self, now: float) -> list[SecurityEvent]:
        """Forget idle state; the bans that ended, as BAN_LIFTED events."""
        self.gate.sweep(now)
        self.auth_failures.sweep(now)
        return [SecurityEvent.from_ban(ban, lifted=True) for ban in self.bans.sweep(now)]


def build_defences(limits: LimitsSettings) -> Defences:
    bans = BanList()
    return Defences(
        gate=ConnectionGate(
            GateLimits(
                connections_per_second_per_ip=limits.connections_per_second_per_ip,
                connection_burst_per_ip=limits.connection_burst_per_ip,
                max_connections_per_ip=limits.max_connections_per_ip,
                max_connections=limits.max_connections,
            )
        ),
        bans=bans,
        auth_failures=AuthFailureTracker(
            bans,
            AuthBackoff(
                initial_delay=limits.auth_backoff_initial,
                max_delay=max(limits.auth_backoff_max, limits.auth_backoff_initial),
                ban_after=limits.auth_failures_before_ban,
                window=limits.auth_failure_window,
                ban_duration=limits.auth_ban_duration,
                ban_usernames=limits.ban_usernames,
            ),
        ),
        flaps=FlapDetector(
            bans,
            FlapLimits(
                max_connects_per_client=limits.flap_connects_per_client,
                max_connects_per_ip=limits.flap_connects_per_ip,
                window=limits.flap_window,
                ban_duration=limits.flap_ban_duration,
            ),
        ),
        default_profile=limit_profile(limits.client),
        user_profiles={name: limit_profile(p) for name, p in limits.users.items()},
    )


__all__ = ["Defences", "build_defences", "limit_profile"]
