"""The settings schema: typed, frozen, strictly validated pydantic models.

``config/load.py`` fills these from a TOML file and command-line overrides; ``runtime/``
reads them to assemble the broker. Every field carries its default and a description,
which ``scripts/gen_config_docs.py`` turns into ``docs/configuration.md``.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "ListenerSettings",
    "LoggingSettings",
    "MqttSettings",
    "SecuritySettings",
    "Settings",
]

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["human", "json"]

_MAX_U32 = 0xFFFF_FFFF
_CLIENT_ID_PREFIX = re.compile(r"[A-Za-z0-9_.-]*")


def _check_host(host: str) -> str:
    """Accept a host name or IP address; ``[::1]`` is normalised to ``::1``."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(ch.isspace() for ch in host) or "[" in host or "]" in host:
        raise PydanticCustomError(
            "bastion_host",
            "expected a host name or IP address (such as 127.0.0.1 or ::1), got {host}",
            {"host": json.dumps(host)},
        )
    return host


def _check_client_id_prefix(prefix: str) -> str:
    if not _CLIENT_ID_PREFIX.fullmatch(prefix):
        raise PydanticCustomError(
            "bastion_client_id_prefix",
            "expected only letters, digits, '_', '.' and '-', got {prefix}",
            {"prefix": json.dumps(prefix)},
        )
    return prefix


class _Section(BaseModel):
    """Common model configuration: unknown keys are errors, values never coerced."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ListenerSettings(_Section):
    """One MQTT listener (a ``[[listeners]]`` table).

    TLS will arrive as an optional ``tls`` sub-table (``tls: TlsSettings | None = None``),
    so a listener without one stays plain TCP.
    """

    host: Annotated[str, Field(max_length=255), AfterValidator(_check_host)] = Field(
        default="127.0.0.1",
        description=(
            "Address to bind: an IP address or host name. `0.0.0.0` or `::` listen on every "
            "interface; IPv6 addresses may be written with or without brackets."
        ),
    )
    port: int = Field(
        default=1883,
        ge=1,
        le=65535,
        description="TCP port to listen on.",
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Optional label used in logs and metrics; must be unique when set.",
    )

    @property
    def address(self) -> str:
        """``host:port`` as people write it, with brackets around an IPv6 host."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class MqttSettings(_Section):
    """Protocol limits and the features announced to clients (the ``[mqtt]`` table)."""

    max_keepalive: int = Field(
        default=65535,
        ge=0,
        le=65535,
        description=(
            "Longest keep-alive interval, in seconds, a client may use. An MQTT 5 client that "
            "asks for more, or for 0 (no keep-alive), is told this value as Server Keep Alive."
        ),
    )
    max_packet_size: int = Field(
        default=1_048_576,
        ge=64,
        le=268_435_460,
        description=(
            "Largest packet, in bytes, accepted from a client (announced to MQTT 5 clients as "
            "Maximum Packet Size). A bigger packet closes the connection."
        ),
    )
    receive_maximum: int = Field(
        default=1024,
        ge=1,
        le=65535,
        description=(
            "How many inbound QoS 1/2 publications a client may have unacknowledged at once "
            "(the server's Receive Maximum)."
        ),
    )
    topic_alias_maximum: int = Field(
        default=64,
        ge=0,
        le=65535,
        description="How many topic aliases a client may use towards the server; 0 refuses them.",
    )
    max_inflight_messages: int = Field(
        default=32,
        ge=1,
        le=65535,
        description=(
            "Cap on outbound QoS 1/2 messages in flight per client; the effective window is the "
            "smaller of this and the client's own Receive Maximum."
        ),
    )
    max_queued_messages: int = Field(
        default=1000,
        ge=0,
        le=10_000_000,
        description=(
            "Messages queued per offline or slow session beyond the in-flight window; "
            "0 queues nothing."
        ),
    )
    max_qos: int = Field(
        default=2,
        ge=0,
        le=2,
        description="Highest QoS the server accepts and grants (announced as Maximum QoS).",
    )
    retain_available: bool = Field(
        default=True,
        description="Whether retained messages are supported (announced as Retain Available).",
    )
    wildcard_subscription_available: bool = Field(
        default=True,
        description="Whether subscriptions may use the `+` and `#` wildcards.",
    )
    subscription_identifier_available: bool = Field(
        default=True,
        description="Whether MQTT 5 subscription identifiers are supported.",
    )
    shared_subscription_available: bool = Field(
        default=True,
        description="Whether `$share/<group>/<filter>` shared subscriptions are supported.",
    )
    max_session_expiry_interval: int = Field(
        default=_MAX_U32,
        ge=0,
        le=_MAX_U32,
        description=(
            "Longest session expiry interval, in seconds, an MQTT 5 client may ask for; larger "
            "requests are capped. 4294967295 means a session may be kept forever."
        ),
    )
    persistent_client_expiration: int | None = Field(
        default=None,
        ge=0,
        le=_MAX_U32,
        description=(
            "Seconds an MQTT 3.1.1 session with clean_session=0 is kept after its client "
            "disconnects; unset keeps it forever."
        ),
    )
    client_id_prefix: Annotated[
        str, Field(max_length=32), AfterValidator(_check_client_id_prefix)
    ] = Field(
        default="auto-",
        description=(
            "Prefix of the client identifiers the server assigns to clients that connect with "
            "an empty one (letters, digits, `_`, `.`, `-`)."
        ),
    )
    max_client_id_length: int = Field(
        default=65535,
        ge=23,
        le=65535,
        description=(
            "Longest client identifier accepted, in bytes (MQTT requires at least 23 to be "
            "accepted)."
        ),
    )
    sys_interval: float = Field(
        default=10.0,
        ge=0,
        le=86_400,
        allow_inf_nan=False,
        description="Seconds between `$SYS/` topic updates; 0 disables them.",
    )
    connect_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description=(
            "Seconds a new network connection has to send its CONNECT packet before it is closed."
        ),
    )
    server_assigns_topic_aliases: bool = Field(
        default=True,
        description=(
            "Whether the server assigns topic aliases on outbound publications, within the "
            "client's Topic Alias Maximum."
        ),
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


class LoggingSettings(_Section):
    """Log output (the ``[logging]`` table); see ``ops/logging.py``."""

    level: LogLevel = Field(
        default="info",
        description="Lowest level written: `debug`, `info`, `warning` or `error`.",
    )
    format: LogFormat = Field(
        default="human",
        description=(
            "`human` for aligned console lines (coloured on a terminal), `json` for one JSON "
            "object per line."
        ),
    )


def _default_listeners() -> list[ListenerSettings]:
    return [ListenerSettings()]


class Settings(_Section):
    """Everything the broker is configured with: the root of a ``bastion.toml`` file."""

    listeners: list[ListenerSettings] = Field(
        default_factory=_default_listeners,
        min_length=1,
        description=(
            "The MQTT listeners, one `[[listeners]]` table each. Without any, Bastion listens "
            "on 127.0.0.1:1883. No two may share a host and port."
        ),
    )
    mqtt: MqttSettings = Field(
        default_factory=MqttSettings,
        description="Protocol limits and features.",
    )
    security: SecuritySettings = Field(
        default_factory=SecuritySettings,
        description="Authentication and authorization.",
    )
    logging: LoggingSettings = Field(
        default_factory=LoggingSettings,
        description="Log output.",
    )

    @field_validator("listeners")
    @classmethod
    def _listeners_are_distinct(cls, listeners: list[ListenerSettings]) -> list[ListenerSettings]:
        seen_address: dict[tuple[str, int], int] = {}
        seen_name: dict[str, int] = {}
        for index, listener in enumerate(listeners):
            address = (listener.host, listener.port)
            if address in seen_address:
                raise PydanticCustomError(
                    "bastion_duplicate_listener",
                    "listeners[{first}] and listeners[{second}] both use {address}",
                    {
                        "first": seen_address[address],
                        "second": index,
                        "address": listener.address,
                    },
                )
            seen_address[address] = index
            if listener.name is not None:
                if listener.name in seen_name:
                    raise PydanticCustomError(
                        "bastion_duplicate_listener",
                        "listeners[{first}] and listeners[{second}] are both named {name}",
                        {
                            "first": seen_name[listener.name],
                            "second": index,
                            "name": json.dumps(listener.name),
                        },
                    )
                seen_name[listener.name] = index
        return listeners
