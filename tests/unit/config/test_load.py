"""Unit tests for ``bastion.config.load``: defaults, overrides, and one clear line per error.

Each error test checks the exact wording an operator sees: the file, the dotted key and
what was expected.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bastion.config import (
    COMMAND_LINE,
    ListenerSettings,
    MqttSettings,
    Settings,
    load_settings,
    parse_listen_address,
)
from bastion.errors import ConfigError
from bastion.security.acl import AclRules

REPO = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, text: str, name: str = "bastion.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path | None, overrides: dict[str, object] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, overrides)
    return str(caught.value).splitlines()


# --- defaults -----------------------------------------------------------------------------


def test_no_file_gives_safe_defaults() -> None:
    settings = load_settings(None, {})
    assert settings.listeners == []  # no implicit listener: `bastion serve` asks for one
    assert settings.security.allow_anonymous is False
    assert settings.logging.level == "info"
    assert settings.logging.format == "human"
    assert settings.mqtt == MqttSettings()
    assert settings.mqtt.max_packet_size == 1_048_576
    assert settings.mqtt.max_session_expiry_interval == 0xFFFF_FFFF
    assert settings.mqtt.persistent_client_expiration is None


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")) == Settings()


def test_file_without_listeners_has_none(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[mqtt]\nmax_qos = 1\n"))
    assert settings.listeners == []
    assert settings.mqtt.max_qos == 1


def test_values_from_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[listeners]]
        host = "0.0.0.0"
        port = 8883
        name = "public"

        [mqtt]
        sys_interval = 0
        persistent_client_expiration = 3600

        [security]
        allow_anonymous = true

        [logging]
        level = "debug"
        format = "json"
        """,
    )
    settings = load_settings(path)
    assert settings.listeners == [ListenerSettings(host="0.0.0.0", port=8883, name="public")]
    assert settings.mqtt.sys_interval == 0.0
    assert isinstance(settings.mqtt.sys_interval, float)
    assert settings.mqtt.persistent_client_expiration == 3600
    assert settings.security.allow_anonymous is True
    assert (settings.logging.level, settings.logging.format) == ("debug", "json")


def test_the_example_file_loads() -> None:
    settings = load_settings(REPO / "examples" / "bastion.toml")
    assert [listener.address for listener in settings.listeners] == [
        "127.0.0.1:1883",
        "[::1]:1883",
    ]
    assert settings.security.allow_anonymous is True


def test_the_production_example_loads_and_is_hardened() -> None:
    examples = REPO / "examples"
    settings = load_settings(examples / "production.toml")
    [listener] = settings.listeners
    assert listener.port == 8883
    assert listener.tls is not None
    assert listener.tls.min_version == "1.3"
    assert listener.tls.certfile == str(examples / "pki" / "server.crt")
    assert settings.security.allow_anonymous is False
    assert settings.security.acl_file == str(examples / "acl.conf")
    rules = AclRules.load(settings.security.acl_file)
    assert rules.check("sensor1", "sensor1", "temp/sensor1", "write").allowed
    assert not rules.check("sensor1", "sensor1", "temp/sensor2", "write").allowed
    assert not rules.check("dashboard", "d", "$SYS/broker/uptime", "read").allowed


def test_bracketed_ipv6_host_is_normalised(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[[listeners]]\nhost = "[::1]"\n'))
    assert settings.listeners[0].host == "::1"
    assert settings.listeners[0].address == "[::1]:1883"


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.mqtt.max_qos = 1


# --- overrides ----------------------------------------------------------------------------


def test_listen_override_replaces_the_files_listeners(tmp_path: Path) -> None:
    path = write(tmp_path, '[[listeners]]\nhost = "10.0.0.1"\nport = 1883\n')
    settings = load_settings(
        path,
        {"listeners": [{"host": "::1", "port": 1884}, {"host": "127.0.0.1", "port": 1884}]},
    )
    assert [listener.address for listener in settings.listeners] == [
        "[::1]:1884",
        "127.0.0.1:1884",
    ]


def test_scalar_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[security]\nallow_anonymous = false\n[logging]\nlevel = "error"\nformat = "human"\n',
    )
    settings = load_settings(
        path,
        {"security.allow_anonymous": True, "logging.level": "debug", "logging.format": "json"},
    )
    assert settings.security.allow_anonymous is True
    assert (settings.logging.level, settings.logging.format) == ("debug", "json")


def test_overrides_without_a_file() -> None:
    settings = load_settings(None, {"security.allow_anonymous": True})
    assert settings.security.allow_anonymous is True
    assert settings.listeners == []


def test_override_errors_name_the_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqtt]\nmax_qos = 5\n")
    lines = problems(path, {"logging.level": "loud"})
    assert lines == [
        f"{path}: mqtt.max_qos: expected an integer between 0 and 2, got 5",
        f'{COMMAND_LINE}: logging.level: expected one of "debug", "info", "warning" or '
        f'"error", got "loud"',
    ]


def test_overrides_do_not_modify_their_input(tmp_path: Path) -> None:
    overrides: dict[str, object] = {"logging.level": "debug"}
    load_settings(write(tmp_path, "[logging]\n"), overrides)
    assert overrides == {"logging.level": "debug"}


# --- file and syntax errors ---------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert problems(path) == [f"{path}: cannot read configuration file: no such file"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert problems(tmp_path) == [f"{tmp_path}: cannot read configuration file: it is a directory"]


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqtt]\nmax_qos = \n")
    (line,) = problems(path)
    assert line.startswith(f"{path}: line 2, column 11: invalid TOML: ")


def test_toml_error_at_end_of_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqtt]\nmax_qos =")
    (line,) = problems(path)
    assert line == f"{path}: end of file: invalid TOML: invalid value"


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bastion.toml"
    path.write_bytes(b"[mqtt]\n# \xff\n")
    assert problems(path) == [f"{path}: not valid UTF-8 text (byte 9 cannot be decoded)"]


# --- unknown keys -------------------------------------------------------------------------


def test_unknown_setting_with_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqtt]\nmaxpacket = 10\n")
    assert problems(path) == [
        f"{path}: mqtt.maxpacket: unknown setting (did you mean max_packet_size?)"
    ]


def test_unknown_setting_that_belongs_elsewhere(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqtt]\nallow_anonymous = true\n")
    assert problems(path) == [
        f"{path}: mqtt.allow_anonymous: unknown setting (it belongs in [security])"
    ]


def test_unknown_setting_without_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "[security]\nxyzzy = 1\n")
    assert problems(path) == [f"{path}: security.xyzzy: unknown setting"]


def test_unknown_section(tmp_path: Path) -> None:
    path = write(tmp_path, '[loging]\nlevel = "info"\n')
    assert problems(path) == [f"{path}: loging: unknown section (did you mean logging?)"]


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 1883\n")
    assert problems(path) == [f"{path}: port: unknown setting (it belongs in [[listeners]])"]


def test_unknown_key_in_a_listener(tmp_path: Path) -> None:
    path = write(tmp_path, "[[listeners]]\nport = 1883\n[[listeners]]\nprot = 1884\n")
    assert problems(path) == [f"{path}: listeners[1].prot: unknown setting (did you mean port?)"]


# --- wrong types and impossible values ----------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[mqtt]\nmax_packet_size = "big"',
            'mqtt.max_packet_size: expected an integer between 64 and 268435460, got "big"',
        ),
        (
            '[mqtt]\nmax_packet_size = "1024"',
            'mqtt.max_packet_size: expected an integer between 64 and 268435460, got "1024"',
        ),
        (
            "[mqtt]\nmax_packet_size = 10",
            "mqtt.max_packet_size: expected an integer between 64 and 268435460, got 10",
        ),
        (
            "[mqtt]\nmax_packet_size = 268435461",
            "mqtt.max_packet_size: expected an integer between 64 and 268435460, got 268435461",
        ),
        (
            "[mqtt]\nmax_qos = 1.0",
            "mqtt.max_qos: expected an integer between 0 and 2, got 1.0",
        ),
        (
            "[mqtt]\nmax_qos = true",
            "mqtt.max_qos: expected an integer between 0 and 2, got true",
        ),
        (
            "[mqtt]\nretain_available = 1",
            "mqtt.retain_available: expected true or false, got 1",
        ),
        (
            '[mqtt]\nretain_available = "yes"',
            'mqtt.retain_available: expected true or false, got "yes"',
        ),
        (
            "[mqtt]\nsys_interval = -1",
            "mqtt.sys_interval: expected a number between 0 and 86400, got -1",
        ),
        (
            "[mqtt]\nsys_interval = nan",
            "mqtt.sys_interval: expected a number between 0 and 86400, got nan",
        ),
        (
            "[mqtt]\nconnect_timeout = 0",
            "mqtt.connect_timeout: expected a number greater than 0 and at most 3600, got 0",
        ),
        (
            "[mqtt]\nmax_client_id_length = 5",
            "mqtt.max_client_id_length: expected an integer between 23 and 65535, got 5",
        ),
        (
            '[mqtt]\nclient_id_prefix = "a/b"',
            "mqtt.client_id_prefix: expected only letters, digits, '_', '.' and '-', got \"a/b\"",
        ),
        (
            "[mqtt]\nclient_id_prefix = 7",
            "mqtt.client_id_prefix: expected a string of at most 32 characters, got 7",
        ),
        (
            '[logging]\nformat = "xml"',
            'logging.format: expected "human" or "json", got "xml"',
        ),
        (
            "mqtt = 3",
            "mqtt: expected a table, got 3",
        ),
        (
            "[listeners]\nport = 1883",
            "listeners: expected an array of tables, got a table",
        ),
        (
            "listeners = [1883]",
            "listeners[0]: expected a table, got 1883",
        ),
        (
            '[[listeners]]\nport = "1883"',
            'listeners[0].port: expected an integer between 1 and 65535, got "1883"',
        ),
        (
            "[[listeners]]\nport = 0",
            "listeners[0].port: expected an integer between 1 and 65535, got 0",
        ),
        (
            '[[listeners]]\nhost = "bad host"',
            "listeners[0].host: expected a host name or IP address (such as 127.0.0.1 or ::1), "
            'got "bad host"',
        ),
        (
            '[[listeners]]\nname = ""',
            'listeners[0].name: expected a string of 1 to 64 characters, got ""',
        ),
    ],
)
def test_wrong_value_gives_one_clear_line(tmp_path: Path, toml: str, expected: str) -> None:
    path = write(tmp_path, toml + "\n")
    assert problems(path) == [f"{path}: {expected}"]


def test_every_problem_is_reported_in_one_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[mqtt]\nmax_qos = 3\nmax_packet_size = "big"\nretain = true\n[security]\nallow = 1\n',
    )
    lines = problems(path)
    assert len(lines) == 4
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert {line.split(": ")[1] for line in lines} == {
        "mqtt.max_qos",
        "mqtt.max_packet_size",
        "mqtt.retain",
        "security.allow",
    }


def test_long_values_are_shortened(tmp_path: Path) -> None:
    path = write(tmp_path, f'[mqtt]\nmax_qos = "{"x" * 500}"\n')
    (line,) = problems(path)
    assert len(line) < len(str(path)) + 150
    assert line.endswith('..."')


# --- listeners ----------------------------------------------------------------------------


def test_duplicate_listeners(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[[listeners]]\nport = 1883\n[[listeners]]\nport = 1884\n"
        '[[listeners]]\nhost = "127.0.0.1"\nport = 1883\n',
    )
    assert problems(path) == [
        f"{path}: listeners: listeners[0] and listeners[2] both use 127.0.0.1:1883"
    ]


def test_duplicate_ipv6_listeners_written_differently(tmp_path: Path) -> None:
    path = write(tmp_path, '[[listeners]]\nhost = "::1"\n[[listeners]]\nhost = "[::1]"\n')
    assert problems(path) == [
        f"{path}: listeners: listeners[0] and listeners[1] both use [::1]:1883"
    ]


def test_duplicate_listener_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[listeners]]\nname = "a"\nport = 1\n[[listeners]]\nname = "a"\nport = 2\n',
    )
    assert problems(path) == [
        f'{path}: listeners: listeners[0] and listeners[1] are both named "a"'
    ]


def test_duplicate_listeners_from_the_command_line() -> None:
    lines = problems(None, {"listeners": [{"host": "::1", "port": 1}, {"host": "::1", "port": 1}]})
    assert lines == [f"{COMMAND_LINE}: listeners: listeners[0] and listeners[1] both use [::1]:1"]


def test_same_port_on_different_hosts_is_fine() -> None:
    settings = load_settings(
        None, {"listeners": [{"host": "127.0.0.1", "port": 1883}, {"host": "::1", "port": 1883}]}
    )
    assert len(settings.listeners) == 2


# --- parse_listen_address -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1883", ("127.0.0.1", 1883)),
        ("localhost:8883", ("localhost", 8883)),
        ("[::1]:1883", ("::1", 1883)),
        ("[::]:1", ("::", 1)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_parse_listen_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1883", '"1883" is not HOST:PORT, e.g. 127.0.0.1:1883'),
        (":1883", '":1883" is not HOST:PORT, e.g. 127.0.0.1:1883'),
        ("::1:1883", '"::1:1883": put an IPv6 address in brackets, e.g. [::1]:1883'),
        ("[::1]", '"[::1]" is not [IPV6]:PORT, e.g. [::1]:1883'),
        ("[]:1883", '"[]:1883" is not [IPV6]:PORT, e.g. [::1]:1883'),
        ("host:0", '"host:0": the port must be a number between 1 and 65535'),
        ("host:65536", '"host:65536": the port must be a number between 1 and 65535'),
        ("host:http", '"host:http": the port must be a number between 1 and 65535'),
        ("host:-1", '"host:-1": the port must be a number between 1 and 65535'),
        ("my host:1", '"my host:1": "my host" is not a host name or IP address'),
    ],
)
def test_parse_listen_address_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_listen_address(text)
    assert str(caught.value) == message


@given(st.integers(min_value=1, max_value=65535), st.sampled_from(["127.0.0.1", "::1", "h"]))
def test_parse_listen_address_round_trips(port: int, host: str) -> None:
    listener = ListenerSettings(host=host, port=port)
    assert parse_listen_address(listener.address) == (host, port)


def test_relative_security_and_tls_paths_follow_the_config_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[security]\npassword_file = "passwd"\nacl_file = "/etc/bastion/acl"\n\n'
        "[[listeners]]\nport = 8883\n[listeners.tls]\n"
        'certfile = "pki/server.crt"\nkeyfile = "pki/server.key"\ncafile = "pki/ca.crt"\n',
    )
    settings = load_settings(path)
    assert settings.security.password_file == str(tmp_path / "passwd")
    assert settings.security.acl_file == "/etc/bastion/acl"
    tls = settings.listeners[0].tls
    assert tls is not None
    assert tls.certfile == str(tmp_path / "pki/server.crt")
    assert tls.cafile == str(tmp_path / "pki/ca.crt")
    assert tls.min_version == "1.3"


def test_client_certificate_options_need_a_ca(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[listeners]]\nport = 8883\n[listeners.tls]\ncertfile = "c"\nkeyfile = "k"\n'
        "require_certificate = true\n",
    )
    assert problems(path) == [
        f"{path}: listeners[0].tls: require_certificate needs cafile "
        "(the CA that client certificates chain to)"
    ]


def test_tls_below_1_2_is_not_a_choice(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[listeners]]\nport = 8883\n[listeners.tls]\ncertfile = "c"\nkeyfile = "k"\n'
        'min_version = "1.1"\n',
    )
    [problem] = problems(path)
    assert "listeners[0].tls.min_version" in problem


def test_acl_file_and_acl_table_are_exclusive(tmp_path: Path) -> None:
    path = write(tmp_path, '[security]\nacl_file = "x"\n[security.acl]\nrules = []\n')
    assert problems(path) == [
        f"{path}: security: set either acl_file or the [security.acl] table, not both"
    ]
