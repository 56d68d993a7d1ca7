"""The fixtures' building blocks: brokers started on demand, clients closed after each test,
unique names and loopback source addresses, and the failure report that shows broker logs.

``tests/interop/conftest.py`` and ``tests/security/conftest.py`` turn these into fixtures.
"""

from __future__ import annotations

import itertools
import ssl
import uuid
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path

import pytest

from .brokerproc import BROKER_KIND, DEV_SETUP, Broker, BrokerSetup, running_brokers, start_broker
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


_LOOPBACK_HOSTS: Iterator[int] = itertools.count(1)


def loopback_address() -> str:
    """A loopback address no other caller in this process got: 127.1.0.1, 127.1.0.2, ...

    Linux routes all of 127.0.0.0/8 to the loopback interface, so a client bound to one of
    these is a distinct source IP for the broker's per-IP limits, bans and back-off, and tests
    do not count against each other. The broker itself listens on 127.0.0.1.
    """
    n = next(_LOOPBACK_HOSTS) % (254 * 256 * 200)
    host, rest = n % 254 + 1, n // 254
    return f"127.{1 + rest // 256 % 200}.{rest % 256}.{host}"


def stop_and_check(broker: Broker) -> None:
    code = broker.stop()
    assert code == 0, (
        f"{broker.kind} exited with {code} on SIGTERM, expected 0\n"
        f"--- broker log ---\n{broker.log_tail()}"
    )


class BrokerFactory:
    """Starts extra brokers with non-default settings; all are stopped (exit 0 checked)."""

    def __init__(self, workdir: Path, setup: BrokerSetup = DEV_SETUP) -> None:
        self.workdir = workdir
        self.setup = setup
        self.started: list[Broker] = []

    def __call__(
        self,
        *,
        bastion_toml: str = "",
        mosquitto_conf: str = "",
        setup: BrokerSetup | None = None,
    ) -> Broker:
        broker = start_broker(
            self.workdir,
            bastion_toml=bastion_toml,
            mosquitto_conf=mosquitto_conf,
            name=f"{BROKER_KIND}{len(self.started)}",
            setup=self.setup if setup is None else setup,
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


class Clients:
    """Makes clients and closes them after the test (paho threads and raw sockets alike).

    ``source``, when set, is the loopback address every client binds to unless told otherwise.
    """

    def __init__(self, source: str | None = None) -> None:
        self.source = source
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
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        source: str | None = None,
    ) -> PahoClient:
        """A paho client (3.1.1 or 5), by default connected and checked for CONNACK success.

        The client id defaults to ``<username>-<random>`` (or ``p-<random>``); with ``tls`` it
        connects to the broker's TLS port.
        """
        if client_id is None:
            client_id = unique("p" if username is None else username)
        client = PahoClient(
            broker.host,
            _port(broker, tls),
            client_id=client_id,
            version=version,
            clean=clean,
            keepalive=keepalive,
            properties=properties,
            will=will,
            username=username,
            password=password,
            tls=tls,
            source=self.source if source is None else source,
        )
        self._paho.append(client)
        if connect:
            result = client.connect()
            if expect_success:
                assert result.reason_code == 0, f"CONNACK refused: {result}"
        return client

    def raw(
        self,
        broker: Broker,
        version: int = MQTT_5,
        *,
        timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
        source: str | None = None,
    ) -> RawClient:
        """An unconnected raw-socket client; call ``.connect()`` or send bytes by hand."""
        client = RawClient(
            broker.host,
            _port(broker, tls),
            version=version,
            timeout=timeout,
            tls=tls,
            source=self.source if source is None else source,
        )
        self._raw.append(client)
        return client

    def close_all(self) -> None:
        for raw in self._raw:
            raw.close()
        for client in self._paho:
            client.close()


def _port(broker: Broker, tls: ssl.SSLContext | None) -> int:
    if tls is None:
        return broker.port
    assert broker.tls_port is not None, "this broker has no TLS listener"
    return broker.tls_port
