"""The demo broker's ``bastion.toml``: TLS 1.3 only, passwords, the ACL, limits, persistence.

Written into the state directory on every run (the port may change between runs) with paths
relative to it, and loaded back through ``bastion.config`` before the broker starts, so a
mistake is reported here rather than by a child process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bastion.config import Settings, load_settings
from bastion.demo.errors import DemoError
from bastion.demo.statedir import StateLayout
from bastion.errors import ConfigError
from bastion.security.pkifiles import write_file

__all__ = ["BrokerPlan", "config_text", "write_config"]

# The budget of every client. The sensors publish a few messages a second; a flood runs
# into this and is disconnected (MQTT 5 reason 0x96), which the attacker observes.
MESSAGES_PER_SECOND: Final = 20.0
BURST_MESSAGES: Final = 60.0
MAX_PACKET_SIZE: Final = 64 * 1024  # IoT-sized: a reading is ~100 bytes
AUTH_FAILURES_BEFORE_BAN: Final = 5


@dataclass(frozen=True, slots=True)
class BrokerPlan:
    """What differs between runs: where the broker listens and which key it uses."""

    host: str
    port: int
    key_file: Path | None = None  # None: $BASTION_MASTER_KEY, else master.key in the state dir


def _string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def config_text(layout: StateLayout, plan: BrokerPlan) -> str:
    """The TOML text; every path is relative to the state directory (the file's own)."""
    root = layout.root

    def rel(path: Path) -> str:
        return _string(path.relative_to(root).as_posix())

    key_line = "" if plan.key_file is None else f"key_file = {_string(str(plan.key_file))}\n"
    return f"""\
# Written by `bastion demo` on every run (edit the demo's options, not this file).
# Run the same broker by hand with: bastion serve -c {layout.config.name}

[[listeners]]
name = "demo-tls"
host = {_string(plan.host)}
port = {plan.port}

[listeners.tls]
certfile = {rel(layout.server_cert)}
keyfile = {rel(layout.server_key)}
min_version = "1.3"

[mqtt]
max_packet_size = {MAX_PACKET_SIZE}
max_message_size = {MAX_PACKET_SIZE // 2}
max_delivery_attempts = 3
sys_interval = 5.0

[security]
allow_anonymous = false
password_file = {rel(layout.passwd)}
acl_file = {rel(layout.acl)}
audit_log = {rel(layout.audit_log)}
# A credential may only be used with its own client id (or "<username>-<suffix>").
client_id_patterns = ["%u", "%u-*"]
# Devices must register a Last Will, so one that vanishes is always noticed.
require_will = ["sensor*", "door*"]

[limits]
auth_failures_before_ban = {AUTH_FAILURES_BEFORE_BAN}
ban_usernames = true

[limits.client]
messages_per_second = {MESSAGES_PER_SECOND}
burst_messages = {BURST_MESSAGES}
action = "disconnect"

[storage]
data_dir = "."
{key_line}
[logging]
level = "info"
format = "json"
"""


def write_config(layout: StateLayout, plan: BrokerPlan) -> Settings:
    """Write ``bastion.toml`` (0600) and return it as the broker will read it."""
    try:
        write_file(layout.config, config_text(layout, plan).encode(), 0o600, replace=True)
        return load_settings(layout.config)
    except ConfigError as exc:
        raise DemoError(f"the demo's broker configuration is not usable: {exc}") from None
