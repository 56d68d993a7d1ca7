"""The settings schema: typed, frozen, strictly validated pydantic models.

``config/load.py`` fills these from a TOML file and command-line overrides; ``runtime/``
reads them to assemble the broker. Every field carries its default and a description,
which ``scripts/gen_config_docs.py`` turns into ``docs/configuration.md``.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "LimitsSettings",
    "ListenerSettings",
    "LoggingSettings",
    "MqttSettings",
    "RateLimitSettings",
    "SecuritySettings",
    "Settings",
    "TlsListenerSettings",
    "UserSettings",
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


_PATH_MAX = 4096


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
    max_queued_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=0,
        le=1 << 40,
        description=(
            "Bytes (payload plus topic) queued per offline or slow session; with "
            "`max_queued_messages`, whichever is reached first bounds the queue. Only QoS 1/2 "
            "copies are ever queued (QoS 0 goes out at once or is dropped), so a full queue "
            "drops the newest QoS 1/2 copy after discarding expired ones; drops are counted and "
            "logged once per episode. 0 queues nothing."
        ),
    )
    max_inflight_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        le=1 << 40,
        description=(
            "Bytes (payload plus topic) of outbound QoS 1/2 messages in flight per client; a new "
            "message starts only while less than this is in flight (so one larger message still "
            "goes out alone), the rest wait in the queue."
        ),
    )
    max_message_size: int = Field(
        default=256 * 1024,
        ge=0,
        le=268_435_455,
        description=(
            "Largest application message payload, in bytes, accepted from a client (wills "
            "included); 0 leaves only `max_packet_size`. MQTT 5 QoS 1/2 publications over it "
            "get PUBACK/PUBREC 0x97 Quota exceeded (0x95 is not a PUBACK code); QoS 0 and MQTT "
            "3.1.1 publishers are disconnected (DISCONNECT 0x97 on MQTT 5); a will over it "
            "refuses the CONNECT (CONNACK 0x97)."
        ),
    )
    max_topic_length: int = Field(
        default=1024,
        ge=1,
        le=65535,
        description=(
            "Longest topic name or topic filter, in UTF-8 bytes (a `$share/<group>/` prefix "
            "counts). A longer topic name is refused like `max_topic_levels` says; a longer "
            "filter gets SUBACK 0x8F Topic Filter invalid (0x80 on MQTT 3.1.1)."
        ),
    )
    max_topic_levels: int = Field(
        default=32,
        ge=1,
        le=65535,
        description=(
            "Most `/`-separated levels in a topic name or filter. A PUBLISH over this or "
            "`max_topic_length` gets PUBACK/PUBREC 0x90 Topic Name invalid on MQTT 5 QoS 1/2; "
            "QoS 0 and MQTT 3.1.1 publishers are disconnected (DISCONNECT 0x90 on MQTT 5); a "
            "will over it gets CONNACK 0x90."
        ),
    )
    max_subscriptions_per_client: int = Field(
        default=1000,
        ge=1,
        le=10_000_000,
        description=(
            "Most subscriptions one session may hold; a new filter beyond it gets SUBACK 0x97 "
            "Quota exceeded (0x80 on MQTT 3.1.1). Re-subscribing to a held filter always works."
        ),
    )
    max_delivery_attempts: int = Field(
        default=3,
        ge=0,
        le=1000,
        description=(
            "Times a QoS 1/2 message (or a QoS 2 PUBREL) is sent to a client that keeps "
            "reconnecting without acknowledging it; after that the flow is dropped for that "
            "client, counted and reported as a security event, so a message that makes a "
            "subscriber disconnect cannot be redelivered forever. 0 resends without limit."
        ),
    )
    max_awaiting_rel: int = Field(
        default=100,
        ge=1,
        le=65535,
        description=(
            "Inbound QoS 2 messages per session that may wait for their PUBREL. One more gets "
            "PUBREC 0x97 Quota exceeded on MQTT 5 (the message is not routed); an MQTT 3.1.1 "
            "client is disconnected."
        ),
    )
    awaiting_rel_timeout: float = Field(
        default=300.0,
        ge=0,
        le=604_800,
        allow_inf_nan=False,
        description=(
            "Seconds an inbound QoS 2 packet identifier waits for its PUBREL before it is "
            "forgotten (the message was already routed; a late PUBREL gets PUBCOMP 0x92). "
            "0 waits forever."
        ),
    )
    max_qos: int = Field(
        default=2,
        ge=0,
        le=2,
        description=(
            "Highest QoS the server accepts and grants (announced as Maximum QoS); "
            "`listeners[].max_qos` and `[security.users.NAME] max_qos` can lower it per "
            "connection."
        ),
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
        default=100.0,
        gt=0,
        allow_inf_nan=False,
        description="Sustained PUBLISH packets per second per client; omit for no limit.",
    )
    burst_messages: float = Field(
        default=200.0, gt=0, allow_inf_nan=False, description="Messages allowed in a burst."
    )
    bytes_per_second: float | None = Field(
        default=1_048_576.0,
        gt=0,
        allow_inf_nan=False,
        description="Sustained payload bytes per second per client; omit for no limit.",
    )
    burst_bytes: float = Field(
        default=2_097_152.0, gt=0, allow_inf_nan=False, description="Payload bytes in a burst."
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
        default=20.0, gt=0, allow_inf_nan=False, description="New connections/s per source IP."
    )
    connection_burst_per_ip: float = Field(
        default=40.0, gt=0, allow_inf_nan=False, description="New connections in a burst per IP."
    )
    max_connections_per_ip: int = Field(
        default=100, ge=1, description="Concurrent connections per source IP."
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
        default=20, ge=1, description="Connects per client id within `flap_window` before a ban."
    )
    flap_connects_per_ip: int = Field(
        default=300, ge=1, description="Connects per source IP within `flap_window` before a ban."
    )
    flap_window: float = Field(
        default=60.0, gt=0, allow_inf_nan=False, description="Reconnect-storm window (s)."
    )
    flap_ban_duration: float = Field(
        default=300.0, gt=0, allow_inf_nan=False, description="Length of a reconnect-storm ban (s)."
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
    limits: LimitsSettings = Field(
        default_factory=LimitsSettings,
        description="Rate limits and abuse defence.",
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
