"""How the services connect: they ride out a broker restart, and a connection they cannot make
ends the command with one clear line (bad password, untrusted server, nothing listening)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from support.brokerproc import HOST, bastion_cli, free_port

from .conftest import ConnectAs, StartService
from .reference import BrokerProcess, Deployment, collect_until, run_cli


def test_a_sensor_keeps_publishing_across_a_broker_restart(
    broker: BrokerProcess, connect_as: ConnectAs, start_service: StartService
) -> None:
    sensor = start_service("sensor", "sensor1", as_client="sensor1", extra=["--interval", "0.2"])
    sensor.wait_event("client.connected")
    viewer = connect_as("viewer")
    viewer.subscribe("temp/sensor1", 0)
    collect_until(viewer, lambda ms: len(ms) == 2)

    port = broker.port
    assert broker.stop() == 0
    broker.start()
    assert broker.port == port

    sensor.wait_event("client.connected", count=2, timeout=30.0)
    again = connect_as("viewer")
    again.subscribe("temp/sensor1", 0)
    readings = collect_until(again, lambda ms: len(ms) == 3)
    assert all(json.loads(m.payload)["device"] == "sensor1" for m in readings)
    lost = sensor.events("client.disconnected")
    assert lost and str(lost[0]["reason"]).startswith("connection lost")
    assert sensor.stop() == 0
    assert sensor.events("sensor.stopped")


def run_service(args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*bastion_cli(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("bastion: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_wrong_password_is_one_line_and_exit_1(
    broker: BrokerProcess, deployment: Deployment, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not the password\n")
    args = deployment.client_args("sensor1", broker.port)
    args[args.index("--password-file") + 1] = str(wrong)
    result = run_service(["sensor", "sensor1", *args, "--duration", "20"])
    assert result.returncode == 1
    assert "refused the connection: Bad user name or password (0x86)" in error_line(result)


def test_an_untrusted_server_certificate_is_one_line_and_exit_1(
    broker: BrokerProcess, deployment: Deployment, tmp_path: Path
) -> None:
    run_cli(["pki", "init", str(tmp_path / "other")])
    args = deployment.client_args("alerts", broker.port)
    args[args.index("--cafile") + 1] = str(tmp_path / "other" / "ca.crt")
    result = run_service(["alerts", *args, "--duration", "20"])
    assert result.returncode == 1
    assert "TLS certificate verification failed" in error_line(result)


def test_nothing_listening_retries_then_gives_up_within_the_duration(
    deployment: Deployment,
) -> None:
    args = deployment.client_args("door1", free_port())
    result = run_service(["doorlock", "door1", *args, "--duration", "2", "--log-format", "json"])
    assert result.returncode == 1
    line = error_line(result)
    assert f"connection refused by {HOST}" in line
    failures = [
        json.loads(text)
        for text in result.stderr.splitlines()
        if text.startswith("{") and '"client.connect_failed"' in text
    ]
    assert len(failures) >= 2  # it retried, with backoff
    assert all(f["permanent"] is False for f in failures)


def test_duration_bounds_a_run_and_sigint_stops_cleanly(start_service: StartService) -> None:
    timed = start_service("sensor", "sensor2", as_client="sensor2", extra=["--duration", "1.5"])
    alerts = start_service("alerts", as_client="alerts")
    alerts.wait_event("client.subscribed")
    assert timed.wait(20.0) == 0, timed.log_text()
    [stopped] = timed.events("sensor.stopped")
    assert isinstance(stopped["published"], int) and stopped["published"] >= 1

    assert alerts.stop(signal.SIGINT) == 0
    assert alerts.events("client.disconnected")[-1]["reason"] == "normal"
    assert alerts.events("alerts.stopped")
