"""The ``[security]`` and ``[limits]`` tables: credentials, ACLs, users, abuse limits.

Part of the settings schema (``schema.py`` is the root); ``runtime/security.py`` and
``security/defences.py`` turn them into the policy and the defences.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from bastion.config.base import PATH_MAX as _PATH_MAX
from bastion.config.base import Section as _Section


class UserSettings(_Section):
    """Per-user settings (a ``[security.users.<name>]`` table).

    They live under ``security`` rather than ``[limits.users.<name>]`` because a limits
    table replaces the whole ``[limits.client]`` budget for that user: a QoS ceiling set
    there would silently reset the user's rate limits to the defaults.
    """

    max_qos: int | None = Field(
        default=None,
        ge=0,
        le=2,
        description="Highest QoS for this user's connections; unset: no per-user ceiling.",
    )


class SecuritySettings(_Section):
    """Authentication and authorization (the ``[security]`` table)."""

    allow_anonymous: bool = Field(
        default=False,
        description=(
            "Whether clients may connect without credentials. Off by default; turn it on for "
            "development only."
        ),
    )
    password_file: str | None = Field(
        default=None,
        min_length=1,
        max_length=_PATH_MAX,
        description=(
            "Password file: `user:hash` lines with argon2id hashes (`bastion passwd`) or "
            "Mosquitto's `$6$`/`$7$` hashes (`mosquitto_passwd`), verified as they are."
        ),
    )
    acl_file: str | None = Field(
        default=None,
        min_length=1,
        max_length=_PATH_MAX,
        description=(
            "ACL file in Mosquitto's `acl_file` syntax (`user`, `topic [read|write|readwrite|"
            "deny]`, `pattern` with `%u`/`%c`). Deny by default."
        ),
    )
    acl: dict[str, object] | None = Field(
        default=None,
        description=(
            "ACL rules in TOML (`[[security.acl.rules]]` with `user`, `anonymous` or "
            "`pattern`, plus `access` and `topic`); an alternative to `acl_file`."
        ),
    )
    audit_log: str | None = Field(
        default=None,
        min_length=1,
        max_length=_PATH_MAX,
        description=(
            "File that receives one JSON line per security event (repeats aggregated). "
            "Without it, security events go to the main log."
        ),
    )
    client_id_patterns: list[str] = Field(
        default_factory=list,
        description=(
            "Client ids an authenticated user may use, as globs with `%u` for the username "
            '(e.g. `["%u", "%u-*"]`), so one user cannot take over another\'s session. Empty: '
            "no restriction."
        ),
    )

    require_will: list[str] = Field(
        default_factory=list,
        description=(
            "Username globs of device accounts that must set a Last Will in CONNECT (e.g. "
            '`["sensor*"]`); without one they are refused with 0x87, so a device that '
            "vanishes is always noticed."
        ),
    )

    users: dict[str, UserSettings] = Field(
        default_factory=dict,
        description=(
            "Per-user settings, one `[security.users.NAME]` table per authenticated username "
            "(anonymous clients have none). `max_qos` (0, 1 or 2) caps the QoS of that user's "
            "connections: the effective ceiling is the lowest of `mqtt.max_qos`, the "
            "listener's `max_qos` and this, announced, granted and enforced as the listener's "
            "is. Here rather than in `[limits.users.NAME]`, which replaces the whole rate budget."
        ),
    )

    @field_validator("client_id_patterns", "require_will")
    @classmethod
    def _patterns_are_sane(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not 1 <= len(pattern) <= 256:
                raise PydanticCustomError(
                    "bastion_client_id_pattern",
                    "expected patterns of 1 to 256 characters, got {pattern}",
                    {"pattern": json.dumps(pattern)},
                )
        return patterns

    @model_validator(mode="after")
    def _one_acl_source(self) -> SecuritySettings:
        if self.acl_file is not None and self.acl is not None:
            raise PydanticCustomError(
                "bastion_two_acls",
                "set either acl_file or the [security.acl] table, not both",
                {},
            )
        return self


class RateLimitSettings(_Section):
    """Per-client publish budget (``[limits.client]``, or ``[limits.users.<name>]``)."""

    messages_per_second: float | None = Field(
        default=1000.0,
        gt=0,
        allow_inf_nan=False,
        description="Sustained PUBLISH packets per second per client; omit for no limit.",
    )
    burst_messages: float = Field(
        default=2000.0, gt=0, allow_inf_nan=False, description="Messages allowed in a burst."
    )
    bytes_per_second: float | None = Field(
        default=10_485_760.0,
        gt=0,
        allow_inf_nan=False,
        description="Sustained payload bytes per second per client; omit for no limit.",
    )
    burst_bytes: float = Field(
        default=20_971_520.0, gt=0, allow_inf_nan=False, description="Payload bytes in a burst."
    )
    action: Literal["throttle", "disconnect"] = Field(
        default="throttle",
        description=(
            "Over the limit: `throttle` stops reading from the client until its budget "
            "refills; `disconnect` closes it (MQTT 5: 0x96 message rate too high, 0x97 quota "
            "exceeded for bytes)."
        ),
    )


class LimitsSettings(_Section):
    """Rate limits, connection caps, brute-force and reconnect-storm defence (``[limits]``)."""

    client: RateLimitSettings = Field(
        default_factory=RateLimitSettings,
        description="Default per-client publish budget.",
    )
    users: dict[str, RateLimitSettings] = Field(
        default_factory=dict,
        description="Per-user budgets that replace `client` for that username.",
    )
    connections_per_second_per_ip: float = Field(
        default=50.0, gt=0, allow_inf_nan=False, description="New connections/s per source IP."
    )
    connection_burst_per_ip: float = Field(
        default=100.0, gt=0, allow_inf_nan=False, description="New connections in a burst per IP."
    )
    max_connections_per_ip: int = Field(
        default=256, ge=1, description="Concurrent connections per source IP."
    )
    max_connections: int = Field(
        default=100_000, ge=1, description="Concurrent connections in total."
    )
    auth_backoff_initial: float = Field(
        default=0.5,
        gt=0,
        allow_inf_nan=False,
        description="CONNACK delay after a first failed login from an IP or username; doubles.",
    )
    auth_backoff_max: float = Field(
        default=30.0, gt=0, allow_inf_nan=False, description="Largest CONNACK delay (seconds)."
    )
    auth_failures_before_ban: int = Field(
        default=10, ge=1, description="Failed logins within `auth_failure_window` that ban."
    )
    auth_failure_window: float = Field(
        default=600.0, gt=0, allow_inf_nan=False, description="Window for counting failures (s)."
    )
    auth_ban_duration: float = Field(
        default=900.0, gt=0, allow_inf_nan=False, description="Length of a brute-force ban (s)."
    )
    ban_usernames: bool = Field(
        default=True,
        description="Also ban the username under attack (not only the source IP).",
    )
    flap_connects_per_client: int = Field(
        default=60, ge=1, description="Connects per client id within `flap_window` before a ban."
    )
    flap_connects_per_ip: int = Field(
        default=600, ge=1, description="Connects per source IP within `flap_window` before a ban."
    )
    flap_window: float = Field(
        default=60.0, gt=0, allow_inf_nan=False, description="Reconnect-storm window (s)."
    )
    flap_ban_duration: float = Field(
        default=300.0, gt=0, allow_inf_nan=False, description="Length of a reconnect-storm ban (s)."
    )


__all__ = ["LimitsSettings", "RateLimitSettings", "SecuritySettings", "UserSettings"]
