"""``ServiceClient``'s persistent sessions and manual acknowledgement, against the real broker.

What the data logger relies on: with clean start off and a session expiry the broker keeps the
session across a clean stop (queued messages, session present); with manual acknowledgement
a message the service never acknowledged is delivered again, one it acknowledged is not;
MQTT 5 properties reach ``Received``; a refused *required* subscription ends the client with
one permanent reason, an optional one does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Final

import pytest

from bastion.services.netclient import Endpoint, Received, ServiceClient
from support.pahoclient import PahoClient

from .conftest import ConnectAs, unique_id

WAIT: Final = 20.0
QUIET: Final = 1.0  # how long "nothing more arrives" is watched

MakeClient = Callable[..., ServiceClient]


@pytest.fixture
def make_client() -> Iterator[MakeClient]:
    """``make_client(endpoint, **options)``: a ServiceClient stopped after the test."""
    made: list[ServiceClient] = []

    def make(
        endpoint: Endpoint,
        *,
        clean_start: bool = True,
        session_expiry: int = 0,
        manual_ack: bool = False,
    ) -> ServiceClient:
        client = ServiceClient(
            endpoint, clean_start=clean_start, session_expiry=session_expiry, manual_ack=manual_ack
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.stop()


def persistent(make_client: MakeClient, endpoint: Endpoint) -> ServiceClient:
    client = make_client(endpoint, clean_start=False, session_expiry=60, manual_ack=True)
    client.subscribe("temp/sensor1", 1)
    assert client.connect(WAIT)
    return client


def settle(client: ServiceClient, publisher: PahoClient) -> list[Received]:
    """Publish probes until one arrives (the subscription is in place), then a marker, and
    receive (and acknowledge) everything up to it: afterwards nothing is on its way."""
    deadline = time.monotonic() + WAIT
    for number in range(100):
        publisher.publish("temp/sensor1", f"probe {number}", qos=1)
        if (message := client.receive(0.2)) is not None:
            break
        assert time.monotonic() < deadline, "the subscription never took effect"
    else:
        raise AssertionError("no probe arrived")
    publisher.publish("temp/sensor1", b"settled", qos=1)
    seen = [message]
    while seen[-1].payload != b"settled":
        following = client.receive(max(0.0, deadline - time.monotonic()))
        assert following is not None, "the marker never arrived"
        seen.append(following)
    for received in seen:
        client.ack(received)
    return seen


def receive_all(client: ServiceClient, quiet: float = QUIET) -> list[Received]:
    """Messages until none arrives for ``quiet`` seconds (at most ``WAIT`` in all)."""
    found: list[Received] = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        message = client.receive(quiet)
        if message is None:
            return found
        found.append(message)
    return found


def test_a_persistent_session_keeps_what_the_service_did_not_acknowledge(
    connect_as: ConnectAs, endpoint_of: Callable[..., Endpoint], make_client: MakeClient
) -> None:
    endpoint = endpoint_of("viewer", unique_id("viewer"))
    sensor = connect_as("sensor1")
    first = persistent(make_client, endpoint)
    assert not first.session_present
    probes = settle(first, sensor)
    assert all(p.qos == 1 and p.connection == 1 and p.mid > 0 for p in probes)

    user_properties = [("site", "lab"), ("site", "roof")]
    sensor.publish(
        "temp/sensor1",
        b'{"value": 21.5}',
        qos=1,
        properties={"ContentType": "application/json", "UserProperty": user_properties},
    )
    kept = first.receive(WAIT)
    assert kept is not None and kept.payload == b'{"value": 21.5}'
    assert (kept.content_type, kept.user_properties) == ("application/json", tuple(user_properties))
    first.stop()  # without acknowledging ``kept``

    sensor.publish("temp/sensor1", b"while away", qos=1)
    second = persistent(make_client, endpoint)
    assert second.session_present
    again = receive_all(second)
    assert [m.payload for m in again] == [b'{"value": 21.5}', b"while away"]
    assert all(m.connection == 1 and m.qos == 1 for m in again)
    assert again[0].content_type == "application/json"
    for message in again:
        second.ack(message)
    second.stop()  # the acknowledgements go out before the DISCONNECT

    third = persistent(make_client, endpoint)
    assert third.session_present
    assert receive_all(third) == []


def test_without_manual_ack_paho_acknowledges_and_a_clean_session_ends(
    connect_as: ConnectAs, endpoint_of: Callable[..., Endpoint], make_client: MakeClient
) -> None:
    endpoint = endpoint_of("viewer", unique_id("viewer"))
    sensor = connect_as("sensor1")
    client = make_client(endpoint)
    client.subscribe("temp/sensor1", 1)
    assert client.connect(WAIT)
    settle(client, sensor)
    client.stop()
    sensor.publish("temp/sensor1", b"nobody listens", qos=1)
    again = make_client(endpoint)
    again.subscribe("temp/sensor1", 1)
    assert again.connect(WAIT)
    assert not again.session_present
    assert receive_all(again) == []


def test_a_refused_required_subscription_ends_the_client(
    connect_as: ConnectAs, endpoint_of: Callable[..., Endpoint], make_client: MakeClient
) -> None:
    sensor = connect_as("sensor1")
    optional = make_client(endpoint_of("dashboard", unique_id("dashboard")))
    optional.subscribe("humid/#", 1)  # refused: the dashboard may read temp/# only
    optional.subscribe("temp/#", 1)
    assert optional.connect(WAIT)
    settle(optional, sensor)
    assert optional.connected and optional.failure is None

    required = make_client(endpoint_of("dashboard", unique_id("dashboard")))
    required.subscribe("#", 1, required=True)
    assert required.connect(WAIT)
    deadline = time.monotonic() + WAIT
    while not required.finished:
        assert time.monotonic() < deadline, "the client kept running without its subscription"
        time.sleep(0.05)
    failure = required.failure
    assert failure is not None and failure.permanent
    assert "refused the subscription to #" in str(failure)
    assert "\n" not in str(failure)
