"""Configuration: the settings schema and the loader that fills it from TOML and the CLI.

``runtime/`` consumes ``Settings``; ``cli/`` calls ``load_settings`` and reports
``bastion.errors.ConfigError`` to the operator.
"""

from bastion.config.load import COMMAND_LINE, load_settings, parse_listen_address
from bastion.config.schema import (
    ListenerSettings,
    LoggingSettings,
    MqttSettings,
    SecuritySettings,
    Settings,
    StorageSettings,
)

__all__ = [
    "COMMAND_LINE",
    "ListenerSettings",
    "LoggingSettings",
    "MqttSettings",
    "SecuritySettings",
    "Settings",
    "StorageSettings",
    "load_settings",
    "parse_listen_address",
]
