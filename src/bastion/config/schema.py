"""The settings schema: typed, frozen, strictly validated pydantic models (the root).

This module holds the root ``Settings``, listeners, TLS and logging; ``mqtt_settings.py``,
``security_settings.py`` and ``storage_settings.py`` hold the ``[mqtt]``, ``[security]``,
``[limits]`` and ``[storage]`` tables (all re-exported here). ``config/load.py`` fills them
from a TOML file and command-line overrides; ``runtime/`` reads them to assemble the
broker. Every field carries its default and a description, which
``scripts/gen_config_docs.py`` turns into ``docs/configuration.md``.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from bastion.config.base import PATH_MAX as _PATH_MAX
from bastion.config.base import Section as _Section
from bastion.config.mqtt_settings import MqttSettings
from bastion.config.security_settings import (
    LimitsSettings,
    RateLimitSettings,
    SecuritySettings,
    UserSettings,
)
from bastion.config.storage_settings import StorageSettings

__all__ = [
    "LimitsSettings",
    "ListenerSettings",
    "LoggingSettings",
    "MqttSettings",
    "RateLimitSettings",
    "SecuritySettings",
    "Settings",
    "StorageSettings",
    "TlsListenerSettings",
    "UserSettings",
]

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["human", "json"]


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


class TlsListenerSettings(_Section):
    """TLS for one listener (a ``[listeners.tls]`` table); relative paths are resolved
    against the directory of the configuration file."""

    certfile: str = Field(
        min_length=1, max_length=_PATH_MAX, description="PEM server certificate (chain) file."
    )
    keyfile: str = Field(
        min_length=1, max_length=_PATH_MAX, description="PEM private key of the server certificate."
    )
    cafile: str | None = Field(
        default=None,
        min_length=1,
        max_length=_PATH_MAX,
        description=(
            "PEM CA certificates that client certificates must chain to. Setting it makes "
            "client certificates optional (verified when presented)."
        ),
    )
    crlfile: str | None = Field(
        default=None,
        min_length=1,
        max_length=_PATH_MAX,
        description="PEM certificate revocation list checked for client certificates.",
    )
    min_version: Literal["1.2", "1.3"] = Field(
        default="1.3",
        description=(
            "Lowest TLS version accepted: `1.3` (default) or `1.2`. TLS 1.0/1.1 and SSLv3 "
            "are never accepted."
        ),
    )
    require_certificate: bool = Field(
        default=False,
        description="Refuse clients without a valid certificate (mutual TLS); needs `cafile`.",
    )
    use_identity_as_username: Literal["none", "cn", "san"] = Field(
        default="none",
        description=(
            "Use the client certificate's identity as the username, with no password: `cn` "
            "(subject common name) or `san` (first DNS/email/URI subject alternative name)."
        ),
    )

    @model_validator(mode="after")
    def _client_certificates_need_a_ca(self) -> TlsListenerSettings:
        if self.cafile is None:
            for option in ("require_certificate", "crlfile", "use_identity_as_username"):
                if getattr(self, option) not in (False, None, "none"):
                    raise PydanticCustomError(
                        "bastion_tls_needs_ca",
                        "{option} needs cafile (the CA that client certificates chain to)",
                        {"option": option},
                    )
        return self


class ListenerSettings(_Section):
    """One MQTT listener (a ``[[listeners]]`` table); plain TCP unless it has ``tls``."""

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
    max_qos: int | None = Field(
        default=None,
        ge=0,
        le=2,
        description=(
            "Highest QoS for clients of this listener; the lowest of this, `mqtt.max_qos` and "
            "the user's `[security.users.NAME] max_qos` applies to a connection. Announced as "
            "Maximum QoS to MQTT 5 clients; subscriptions are granted at most this QoS; a "
            "PUBLISH above it closes the connection (DISCONNECT 0x9B on MQTT 5; MQTT 3.1.1 "
            "clients, who cannot be told, are disconnected as Mosquitto does) and a will above "
            "it refuses the CONNECT (0x9B). Unset: `mqtt.max_qos`."
        ),
    )

    tls: TlsListenerSettings | None = Field(
        default=None,
        description=(
            "TLS settings (`[listeners.tls]`); without them the listener is plain TCP, which "
            "is logged as a warning on any non-loopback address."
        ),
    )

    @property
    def address(self) -> str:
        """``host:port`` as people write it, with brackets around an IPv6 host."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


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


class Settings(_Section):
    """Everything the broker is configured with: the root of a ``bastion.toml`` file."""

    listeners: list[ListenerSettings] = Field(
        default_factory=list,
        description=(
            "The MQTT listeners, one `[[listeners]]` table each (plain TCP, or TLS with a "
            "`[listeners.tls]` table). There is no implicit listener: `bastion serve` needs "
            "at least one here or on the command line (`--listen`, `--tls-listen`). No two "
            "may share a host and port."
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
    limits: LimitsSettings = Field(
        default_factory=LimitsSettings,
        description="Rate limits and abuse defence.",
    )
    storage: StorageSettings = Field(
        default_factory=StorageSettings,
        description=(
            "Persistence and encryption at rest. `bastion keys` uses `data_dir`, `key_file` "
            "and `key_env` today; the broker reads this table once persistence is wired in."
        ),
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
