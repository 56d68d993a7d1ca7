"""Fixtures of the security suite: the hardened deployment's files, its broker, clients that
each test runs from a loopback address of its own, and bystanders that must never notice.

Brokers and clients come from ``tests/support`` (shared with the interop suite).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.brokerproc import BROKER_KIND, Broker, start_broker
from support.clients import (
    BrokerFactory,
    Clients,
    loopback_address,
    pytest_runtest_makereport,
    stop_and_check,
)
from support.pahoclient import PahoClient

from .deployment import (
    ADMIN,
    ALICE,
    BOB,
    Credentials,
    Pki,
    hardened_config,
    make_pki,
    write_credentials,
)
from .harness import Bystanders, connect_as, topic_ns

__all__ = [
    "admin",
    "broker",
    "broker_factory",
    "bystanders",
    "credentials",
    "module_clients",
    "mqtt",
    "ns",
    "pki",
    "pytest_runtest_makereport",
]


@pytest.fixture(scope="session")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    """The password file (made by mosquitto_passwd) and the Mosquitto-syntax ACL file."""
    return write_credentials(tmp_path_factory.mktemp("credentials"))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, server certificate and client certificates from ``bastion pki``."""
    return make_pki(tmp_path_factory.mktemp("pki") / "pki", clients=(ALICE, BOB))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, credentials: Credentials) -> Iterator[Broker]:
    """The module's hardened broker: password file, ACL, no anonymous access, plain TCP."""
    started = start_broker(
        tmp_path_factory.mktemp("broker"),
        name=BROKER_KIND,
        setup=credentials.setup(),
        **hardened_config(),
    )
    yield started
    stop_and_check(started)


@pytest.fixture
def broker_factory(tmp_path: Path, credentials: Credentials) -> Iterator[BrokerFactory]:
    """Brokers with the test's own settings; hardened (``credentials.setup()``) by default."""
    factory = BrokerFactory(tmp_path, credentials.setup())
    yield factory
    factory.stop_all()


@pytest.fixture
def mqtt() -> Iterator[Clients]:
    """Clients bound to a loopback address of this test's own (attackers take another)."""
    clients = Clients(source=loopback_address())
    yield clients
    clients.close_all()


@pytest.fixture
def ns() -> str:
    return topic_ns()


@pytest.fixture(scope="module")
def module_clients() -> Iterator[Clients]:
    """Clients that live as long as the module's broker (bystanders, the admin), on an address
    of their own. Logins are deliberately slow (argon2id), so each module logs these in once."""
    clients = Clients(source=loopback_address())
    yield clients
    clients.close_all()


@pytest.fixture(scope="module")
def bystanders(broker: Broker, module_clients: Clients) -> Bystanders:
    """Well-behaved clients on the module's broker, already exchanging messages; every test
    that attacks the broker ends with ``bystanders.exchange()``."""
    group = Bystanders(module_clients, broker)
    group.exchange()
    return group


@pytest.fixture(scope="module")
def admin(broker: Broker, module_clients: Clients) -> PahoClient:
    """The admin (may read and write all of sec/#), a v5 client that publishes sentinels."""
    return connect_as(module_clients, broker, ADMIN)
