"""The service commands' shared options: connection options into an Endpoint, password files,
run bounds and log format, signals; and the usage errors of sensor / alerts / doorlock."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from bastion.cli.clientopts import (
    PASSWORD_ENV,
    client_options,
    endpoint_from_context,
    read_password_file,
    run_options,
    stop_on_signals,
)
from bastion.cli.main import main
from bastion.errors import ConfigError
from bastion.services.netclient import Endpoint

SEEN: list[tuple[Endpoint, float | None, str]] = []


@click.command()
@client_options
@run_options
@click.pass_context
def probe(ctx: click.Context, duration: float | None, log_format: str) -> None:
    SEEN.append((endpoint_from_context(ctx, default_client_id="probe"), duration, log_format))


def run_probe(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    SEEN.clear()
    result = CliRunner().invoke(probe, args, env=env or {PASSWORD_ENV: ""})
    return result.exit_code, result.output


def parsed(args: list[str], env: dict[str, str] | None = None) -> Endpoint:
    code, output = run_probe(args, env)
    assert code == 0, output
    return SEEN[-1][0]


def test_defaults_are_localhost_8883_without_credentials() -> None:
    assert parsed([]) == Endpoint(client_id="probe")
    assert SEEN[-1][1:] == (None, "text")


def test_every_connection_option(tmp_path: Path) -> None:
    ca, cert, key, secret = (tmp_path / n for n in ("ca.crt", "c.crt", "c.key", "pw"))
    for path in (ca, cert, key):
        path.write_text("x")
    secret.write_text("s3cret: with spaces\r\nsecond line is ignored\n")
    endpoint = parsed(
        [
            "--host", "broker.local", "--port", "18883",
            "--cafile", str(ca), "--certfile", str(cert), "--keyfile", str(key),
            "--username", "sensor1", "--password-file", str(secret),
            "--client-id", "sensor1-a", "--duration", "2.5", "--log-format", "json",
        ]
    )  # fmt: skip
    assert endpoint == Endpoint(
        host="broker.local",
        port=18883,
        cafile=ca,
        certfile=cert,
        keyfile=key,
        username="sensor1",
        password="s3cret: with spaces",
        client_id="sensor1-a",
    )
    assert SEEN[-1][1:] == (2.5, "json")


def test_password_from_the_environment_when_no_file() -> None:
    endpoint = parsed(["--username", "u"], env={PASSWORD_ENV: "from env"})
    assert endpoint.password == "from env"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "0"], "0 is not in the range 1<=x<=65535"),
        (["--cafile", "/nonexistent/ca.crt"], "does not exist"),
        (["--duration", "0"], "must be a positive number of seconds"),
        (["--duration", "nan"], "must be a positive number of seconds"),
        (["--log-format", "xml"], "'xml' is not one of 'text', 'json'"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    code, output = run_probe(args)
    assert code == 2
    assert message in output


def test_inconsistent_options_name_the_options(tmp_path: Path) -> None:
    cert = tmp_path / "c.crt"
    cert.write_text("x")
    code, output = run_probe(["--certfile", str(cert)])
    assert (code, "needs both --certfile and --keyfile" in output) == (2, True)
    code, output = run_probe(["--username", "u"], env={PASSWORD_ENV: ""})
    assert code == 0
    code, output = run_probe([], env={PASSWORD_ENV: "pw"})
    assert (code, "a password needs --username" in output) == (2, True)


def test_password_files(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"only line")
    assert read_password_file(path) == "only line"
    for content, message in [
        (b"", "is empty"),
        (b"\nsecond", "is empty"),
        (b"\xff\xfe\n", "not UTF-8"),
        (b"x" * 2000, "over 1024 bytes"),
    ]:
        path.write_bytes(content)
        with pytest.raises(ConfigError, match=message):
            read_password_file(path)
    with pytest.raises(ConfigError, match="cannot read password file"):
        read_password_file(tmp_path / "missing")


def test_sigterm_sets_the_stop_event_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5.0)
    assert signal.getsignal(signal.SIGTERM) is before


def test_outside_the_main_thread_no_handler_is_installed() -> None:
    seen: list[bool] = []

    def worker() -> None:
        with stop_on_signals() as stop:
            seen.append(stop.is_set())

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(5.0)
    assert seen == [False]
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sensor", "sensor9"], "give its --kind"),
        (["sensor", "bad/name"], "bad device name"),
        (["sensor", "sensor1", "--interval", "-1"], "positive number of seconds"),
        (["sensor", "sensor1", "--count", "0"], "0 is not in the range x>=1"),
        (["sensor", "sensor1", "--topic", "temp/#"], "wildcard"),
        (["alerts", "--rule", "temp/#:value=3"], "bad rule"),
        (["alerts", "--holdoff", "-5"], "seconds >= 0"),
        (["doorlock"], "Missing argument 'DEVICE'"),
        (["doorlock", "door/1"], "bad device name"),
    ],
)
def test_service_commands_refuse_bad_input(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args, env={PASSWORD_ENV: ""})
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
