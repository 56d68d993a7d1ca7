"""Fixtures for the black-box interop suite: the broker process and the clients that talk to it.

A module shares one default broker (``broker``); tests that need their own limits or that stop
the broker use ``broker_factory``. Client objects made through ``mqtt`` are closed afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path

import pytest

from .brokerproc import BROKER_KIND, Broker, running_brokers, start_broker
from .pahoclient import V5, PahoClient, PahoWill, PropInput
from .rawclient import MQTT_5, RawClient


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, attach the log of every broker that is still running to the report."""
    report = yield
    if report.failed:
        for broker in running_brokers():
            report.sections.append(
                (f"{broker.kind} log (pid {broker.pid}, port {broker.port})", broker.log_tail())
            )
    return report


def unique(prefix: str = "t") -> str:
    """A short unique name (client ids stay within the 23 characters every broker accepts)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def stop_and_check(broker: Broker) -> None:
    code = broker.stop()
    assert code == 0, (
        f"{broker.kind} exited with {code} on SIGTERM, expected 0\n"
        f"--- broker log ---\n{broker.log_tail()}"
    )


class BrokerFactory:
    """Starts extra brokers with non-default settings; all are stopped (exit 0 checked)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Broker] = []

    def __call__(self, *, bastion_toml: str = "", mosquitto_conf: str = "") -> Broker:
        broker = start_broker(
            self.workdir,
            bastion_toml=bastion_toml,
            mosquitto_conf=mosquitto_conf,
            name=f"{BROKER_KIND}{len(self.started)}",
        )
        self.started.append(broker)
        return broker

    def stop_all(self) -> None:
        errors: list[str] = []
        for broker in self.started:
            if broker.exit_code is not None:
                continue  # the test stopped it and checked the result itself
            try:
                stop_and_check(broker)
            except AssertionError as exc:
                errors.append(str(exc))
        assert not errors, "\n\n".join(errors)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The module's broker with default settings (Bastion, or mosquitto under the switch)."""
    started = start_broker(tmp_path_factory.mktemp("broker"), name=BROKER_KIND)
    yield started
    stop_and_check(started)


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    factory = BrokerFactory(tmp_path)
    yield factory
    factory.stop_all()


class Clients:
    """Makes clients and closes them after the test (paho threads and raw sockets alike)."""

    def __init__(self) -> None:
        self._paho: list[PahoClient] = []
        self._raw: list[RawClient] = []

    def paho(
        self,
        broker: Broker,
        version: int = V5,
        *,
        client_id: str | None = None,
        clean: bool = True,
        keepalive: int = 60,
        properties: Mapping[str, PropInput] | None = None,
        will: PahoWill | None = None,
        connect: bool = True,
        expect_success: bool = True,
    ) -> PahoClient:
        """A paho client (3.1.1 or 5), by default connected and checked for CONNACK success."""
        client = PahoClient(
            broker.host,
            broker.port,
            client_id=unique("p") if client_id is None else client_id,
            version=version,
            clean=clean,
            keepalive=keepalive,
            properties=properties,
            will=will,
        )
        self._paho.append(client)
        if connect:
            result = client.connect()
            if expect_success:
                assert result.reason_code == 0, f"CONNACK refused: {result}"
        return client

    def raw(self, broker: Broker, version: int = MQTT_5, *, timeout: float = 5.0) -> RawClient:
        """An unconnected raw-socket client; call ``.connect()`` or send bytes by hand."""
        client = RawClient(broker.host, broker.port, version=version, timeout=timeout)
        self._raw.append(client)
        return client

    def close_all(self) -> None:
        for raw in self._raw:
            raw.close()
        for client in self._paho:
            client.close()


@pytest.fixture
def mqtt() -> Iterator[Clients]:
    clients = Clients()
    yield clients
    clients.close_all()


@pytest.fixture
def ns() -> str:
    """A topic namespace unique to the test, so tests sharing a broker never see each other."""
    return f"interop/{uuid.uuid4().hex[:10]}"
