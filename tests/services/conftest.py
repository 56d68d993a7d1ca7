"""Fixtures of the service tests: the reference deployment, its TLS broker, observer clients
(real paho clients with their own credentials) and service processes stopped after each test.

Building blocks are in ``reference.py`` and ``tests/support``; only processes started here are
signalled, by PID.
"""

from __future__ import annotations

import contextlib
import signal
import ssl
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path

import pytest

from bastion.services.netclient import Endpoint
from support.brokerproc import HOST
from support.pahoclient import PahoClient, PahoWill

from .reference import (
    BrokerProcess,
    Deployment,
    ServiceProcess,
    make_deployment,
    password_of,
)

ConnectAs = Callable[..., PahoClient]
StartService = Callable[..., ServiceProcess]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, attach the broker's log and every service log of the test."""
    report = yield
    if report.failed:
        broker = item.funcargs.get("broker") if hasattr(item, "funcargs") else None
        if isinstance(broker, BrokerProcess):
            report.sections.append((f"broker log (port {broker.port})", broker.log_tail()))
        for proc in item.stash.get(_SERVICES, []):
            with contextlib.suppress(OSError):
                report.sections.append((f"service log {proc.log_path.name}", proc.log_text()))
    return report


_SERVICES = pytest.StashKey[list[ServiceProcess]]()


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """PKI from ``bastion pki init``, one password per client, the least-privilege ACL."""
    return make_deployment(tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def module_broker(
    tmp_path_factory: pytest.TempPathFactory, deployment: Deployment
) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(deployment, tmp_path_factory.mktemp("broker"))
    broker.start()
    yield broker
    code = broker.stop()
    assert code == 0, f"broker exited with {code}\n{broker.log_tail()}"


@pytest.fixture
def broker(module_broker: BrokerProcess) -> BrokerProcess:
    """The module's TLS broker, (re)started if a test stopped it."""
    if module_broker.proc is None:
        module_broker.start()
    return module_broker


def tls_context(deployment: Deployment) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(deployment.ca))


def unique_id(client: str) -> str:
    """A client id the broker's ``%u-*`` pattern allows for ``client``."""
    return f"{client}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def connect_as(broker: BrokerProcess, deployment: Deployment) -> Iterator[ConnectAs]:
    """``connect_as("viewer")``: a connected paho client (TLS, password), closed afterwards."""
    clients: list[PahoClient] = []

    def connect(
        client: str, *, client_id: str | None = None, will: PahoWill | None = None
    ) -> PahoClient:
        paho = PahoClient(
            HOST,
            broker.port,
            client_id=client_id or unique_id(client),
            username=client,
            password=password_of(client),
            tls=tls_context(deployment),
            will=will,
        )
        clients.append(paho)
        result = paho.connect()
        assert result.reason_code == 0, f"{client} refused: {result}"
        return paho

    yield connect
    for paho in clients:
        paho.close()


@pytest.fixture
def endpoint_of(broker: BrokerProcess, deployment: Deployment) -> Callable[..., Endpoint]:
    """``endpoint_of("sensor1")``: the Endpoint a service of that client uses in-process."""

    def endpoint(client: str, client_id: str | None = None) -> Endpoint:
        return Endpoint(
            host=HOST,
            port=broker.port,
            cafile=deployment.ca,
            username=client,
            password=password_of(client),
            client_id=client_id or client,
        )

    return endpoint


@pytest.fixture
def start_service(
    request: pytest.FixtureRequest,
    broker: BrokerProcess,
    deployment: Deployment,
    tmp_path: Path,
) -> Iterator[StartService]:
    """``start_service("sensor", "sensor1", as_client="sensor1", extra=[...])``: a
    ``bastion ...`` process with the client's connection options and JSON logs on stderr."""
    started: list[ServiceProcess] = []
    request.node.stash[_SERVICES] = started

    def start(
        command: str,
        *args: str,
        as_client: str,
        client_id: str | None = None,
        port: int | None = None,
        extra: Sequence[str] = (),
    ) -> ServiceProcess:
        argv = [
            command,
            *args,
            *deployment.client_args(as_client, port or broker.port, client_id=client_id),
            "--log-format",
            "json",
            *extra,
        ]
        proc = ServiceProcess(argv, tmp_path / f"{command}-{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop(signal.SIGTERM)
