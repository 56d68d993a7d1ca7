"""Fixtures for the black-box interop suite: the broker process and the clients that talk to it.

A module shares one default broker (``broker``); tests that need their own limits or that stop
the broker use ``broker_factory``. Client objects made through ``mqtt`` are closed afterwards.
The building blocks live in ``tests/support`` (shared with ``tests/security``).
"""

from __future__ import annotations

import uuid
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

__all__ = ["broker", "broker_factory", "mqtt", "ns", "pytest_runtest_makereport"]


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


@pytest.fixture
def mqtt() -> Iterator[Clients]:
    """Clients of one test, bound to a loopback address of the test's own: like separate
    devices, tests never add up against the broker's per-IP limits (on by default)."""
    clients = Clients(source=loopback_address())
    yield clients
    clients.close_all()


@pytest.fixture
def ns() -> str:
    """A topic namespace unique to the test, so tests sharing a broker never see each other."""
    return f"interop/{uuid.uuid4().hex[:10]}"
