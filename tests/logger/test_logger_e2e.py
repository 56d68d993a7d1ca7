"""The data logger end to end: ``bastion logger run`` against a real TLS broker, fed by real
paho clients, read back with ``bastion logger query`` as separate processes.

The broker is the reference deployment of ``tests/services/reference.py`` (TLS, a password
per client, the least-privilege ACL: ``logger`` may read ``#`` and nothing else). Checks:
readings stored and decrypted, no reading in the clear in any state file while it runs,
a clean stop on SIGTERM, nothing lost across a kill -9 (acknowledged only after the commit,
persistent session), and a refusal (no read permission) as one line and exit 1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest

from services.reference import (
    CLI_TIMEOUT,
    BrokerProcess,
    Deployment,
    ServiceProcess,
    make_deployment,
    password_of,
)
from support.brokerproc import HOST, bastion_cli
from support.pahoclient import PahoClient
from support.postgres import fresh_database

from .conftest import BACKENDS, NO_ENV, Backend

pytestmark = pytest.mark.interop

STORE_TIMEOUT: Final = 20.0
LoggerFactory = Callable[..., ServiceProcess]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return make_deployment(tmp_path_factory.mktemp("logger-deployment"))


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory, deployment: Deployment
) -> Iterator[BrokerProcess]:
    process = BrokerProcess(deployment, tmp_path_factory.mktemp("logger-broker"))
    process.start()
    yield process
    code = process.stop()
    assert code == 0, f"broker exited with {code}\n{process.log_tail()}"


@pytest.fixture
def e2e_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Like ``backend``, but the state directory is separate from the broker's."""
    yield from _backend(request, tmp_path)


def _backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    state = tmp_path / "logger-state"
    if request.param == "sqlite":
        yield Backend("sqlite", state)
        return
    with fresh_database(request.getfixturevalue("postgres_url")) as url:
        yield Backend("postgres", state, url)


@pytest.fixture
def start_logger(
    broker: BrokerProcess, deployment: Deployment, tmp_path: Path
) -> Iterator[LoggerFactory]:
    """``start_logger(backend)``: ``bastion logger run`` as ``logger`` (SIGTERM afterwards),
    with a client id of this test's own (its session is this test's alone)."""
    started: list[ServiceProcess] = []
    session = f"logger-{uuid.uuid4().hex[:8]}"

    def start(backend: Backend, *extra: str, as_client: str = "logger") -> ServiceProcess:
        argv = [
            "logger",
            "run",
            *backend.cli_args(),
            *deployment.client_args(
                as_client, broker.port, client_id=session if as_client == "logger" else as_client
            ),
            "--log-format",
            "json",
            *extra,
        ]
        env = {**NO_ENV, "BASTION_MASTER_KEY": "", "BASTION_LOGGER_DATABASE_URL": ""}
        proc = ServiceProcess(argv, tmp_path / f"logger-{len(started)}.log", env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop(signal.SIGTERM)


@pytest.fixture
def publisher(
    broker: BrokerProcess, deployment: Deployment
) -> Iterator[Callable[[str], PahoClient]]:
    """``publisher("sensor1")``: a connected paho client with that account's password."""
    clients: list[PahoClient] = []

    def connect(account: str) -> PahoClient:
        client = PahoClient(
            HOST,
            broker.port,
            client_id=f"{account}-{uuid.uuid4().hex[:8]}",
            username=account,
            password=password_of(account),
            tls=ssl.create_default_context(cafile=str(deployment.ca)),
        )
        clients.append(client)
        assert client.connect().reason_code == 0
        return client

    yield connect
    for client in clients:
        client.close()


def reading(device: str, value: float) -> bytes:
    return json.dumps(
        {
            "device": device,
            "ts": "2026-11-26T10:00:00.000Z",
            "value": value,
            "unit": "%RH" if device == "sensor2" else "C",
        }
    ).encode()


def query(backend: Backend, *args: str) -> list[dict[str, object]]:
    result = subprocess.run(
        [*bastion_cli(), "logger", "query", *backend.cli_args(), "--format", "json", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
        env=_cli_env(),
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert isinstance(document, list)
    return document


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_total(proc: ServiceProcess, total: int) -> None:
    deadline = time.monotonic() + STORE_TIMEOUT
    while True:
        stored = [e.get("total") for e in proc.events("logger.stored")]
        if any(isinstance(t, int) and t >= total for t in stored):
            return
        assert time.monotonic() < deadline and proc.proc.poll() is None, (
            f"logger did not store {total} messages in time (exit {proc.proc.poll()})\n"
            f"{proc.log_text()[-4000:]}"
        )
        time.sleep(0.05)


@pytest.mark.parametrize("e2e_backend", BACKENDS, indirect=True)
def test_readings_are_stored_sealed_and_queried(
    e2e_backend: Backend, start_logger: LoggerFactory, publisher: Callable[[str], PahoClient]
) -> None:
    logger = start_logger(e2e_backend, "--flush-interval", "0.2")
    logger.wait_event("client.connected")
    sensor1, sensor2 = publisher("sensor1"), publisher("sensor2")
    for i in range(20):
        sensor1.publish("temp/sensor1", reading("sensor1", 21 + i / 8), qos=i % 2)
        sensor2.publish("humid/sensor2", reading("sensor2", 48.5), qos=0)
    sensor1.publish("status/sensor1", b"online", qos=1, retain=True)
    wait_total(logger, 41)
    if e2e_backend.name == "sqlite":  # while it runs: the database, its -wal and -shm
        files = [p for p in e2e_backend.state_dir.iterdir() if p.suffix != ".key"]
        assert "logger.db-wal" in {p.name for p in files}
        for path in files:
            data = path.read_bytes()
            assert b"unit" not in data and b"%RH" not in data and b"23.375" not in data, path
    else:
        assert [p.name for p in e2e_backend.state_dir.iterdir()] == ["master.key"]
    temps = query(e2e_backend, "--topic", "temp/#")
    assert len(temps) == 20
    payloads = [m["payload"] for m in temps]
    assert all(isinstance(p, dict) and p["unit"] == "C" for p in payloads)
    assert [m["qos"] for m in temps] == [i % 2 for i in range(20)]
    assert [p["value"] for p in payloads if isinstance(p, dict)][-1] == 21 + 19 / 8
    status = query(e2e_backend, "--topic", "status/+")
    live = [(m["topic"], m["payload"]) for m in status if not m["retain"]]
    assert live == [("status/sensor1", "online")]
    # An earlier test's retained status arrives (retain set) when the subscription is new.
    assert all(m["payload"] == "online" for m in status)
    assert len(query(e2e_backend, "--topic", "humid/sensor2", "--limit", "5")) == 5
    assert logger.stop(signal.SIGTERM) == 0
    stopped = logger.events("logger.stopped")
    assert stopped and stopped[0]["total"] == len(query(e2e_backend, "--limit", "0")) >= 41
    assert logger.events("client.disconnected")[-1]["reason"] == "normal"


def test_nothing_is_lost_across_a_kill_and_an_absence(
    tmp_path: Path, start_logger: LoggerFactory, publisher: Callable[[str], PahoClient]
) -> None:
    backend = Backend("sqlite", tmp_path / "logger-state")
    # Nothing is committed before 30 s: what it received is neither stored nor acknowledged.
    first = start_logger(backend, "--flush-interval", "30", "--batch-size", "1000")
    first.wait_event("client.connected")
    sensor = publisher("sensor1")
    for i in range(5):
        assert sensor.publish("temp/sensor1", reading("sensor1", i), qos=1) == 0
    time.sleep(1.0)  # delivered to the logger by now; the batch is still open
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert first.events("logger.stored") == []
    for i in range(5, 8):  # while no logger runs: queued in its session by the broker
        assert sensor.publish("temp/sensor1", reading("sensor1", i), qos=1) == 0
    second = start_logger(backend, "--flush-interval", "0.2")
    connected = second.wait_event("client.connected")
    assert connected[0]["session_present"] is True
    wait_total(second, 8)
    values = sorted(m["payload"]["value"] for m in query(backend) if isinstance(m["payload"], dict))
    assert values == list(range(8))
    assert second.stop(signal.SIGTERM) == 0


def test_an_account_without_read_access_is_refused_in_one_line(
    tmp_path: Path, start_logger: LoggerFactory
) -> None:
    backend = Backend("sqlite", tmp_path / "logger-state")
    intruder = start_logger(backend, as_client="dashboard")  # may read temp/# only
    assert intruder.wait(CLI_TIMEOUT) == 1
    errors = [line for line in intruder.log_text().splitlines() if line.startswith("bastion:")]
    assert len(errors) == 1
    assert "refused the subscription to #" in errors[0]
    assert "Traceback" not in intruder.log_text()


def test_a_wrong_password_is_refused_in_one_line(
    tmp_path: Path, start_logger: LoggerFactory
) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not the password\n")
    backend = Backend("sqlite", tmp_path / "logger-state")
    refused = start_logger(backend, "--password-file", str(wrong))
    assert refused.wait(CLI_TIMEOUT) == 1
    errors = [line for line in refused.log_text().splitlines() if line.startswith("bastion:")]
    assert len(errors) == 1
    assert re.search(r"refused the connection: .*\(0x86\)", errors[0]), errors[0]


def test_duration_ends_the_run_cleanly(tmp_path: Path, start_logger: LoggerFactory) -> None:
    backend = Backend("sqlite", tmp_path / "logger-state")
    started = time.monotonic()
    logger = start_logger(backend, "--duration", "2")
    assert logger.wait(CLI_TIMEOUT) == 0
    assert 2.0 <= time.monotonic() - started < 30
    assert logger.events("logger.stopped")
    assert logger.events("client.disconnected")[-1]["reason"] == "normal"
