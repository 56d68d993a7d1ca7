"""07 connection abuse: slowloris (connections that never complete their CONNECT are closed
after ``mqtt.connect_timeout``, even when they trickle bytes), connection storms from one IP
(per-IP connection rate and concurrent-connection caps), and reconnect storms with one client
id ("flapping", banned for a while) — while established and fresh clients elsewhere carry on.

Attackers run from loopback addresses of their own (127.x.y.z), as remote devices would.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import Final

import pytest

from support.brokerproc import HOST, Broker, bastion_only
from support.clients import BrokerFactory, Clients, loopback_address, unique
from support.rawclient import MQTT_5, RawClient, encode_connect
from support.settings import SettingValue

from .deployment import ALICE, BOB, CAROL, PASSWORDS, hardened_config
from .harness import (
    BANNED,
    CONNECTION_RATE_EXCEEDED,
    NOT_AUTHORIZED,
    Bystanders,
    LoginOutcome,
    connect_as,
    start_login,
    try_login,
)

pytestmark = [
    pytest.mark.security,
    bastion_only("mosquitto has no CONNECT timeout, per-IP connection caps or flap bans"),
]

CONNECT_TIMEOUT: Final = 1.0
# Settings under test (issue 4: `mqtt.connect_timeout` and `[limits]`).
SLOWLORIS: Final[Mapping[str, SettingValue]] = {"mqtt.connect_timeout": CONNECT_TIMEOUT}
RATE_PER_IP: Final = 5.0
BURST_PER_IP: Final = 10.0
STORM: Final[Mapping[str, SettingValue]] = {
    "limits.connections_per_second_per_ip": RATE_PER_IP,
    "limits.connection_burst_per_ip": BURST_PER_IP,
}
MAX_PER_IP: Final = 5
CONCURRENT: Final[Mapping[str, SettingValue]] = {"limits.max_connections_per_ip": MAX_PER_IP}
FLAP_LIMIT: Final = 5
FLAPPING: Final[Mapping[str, SettingValue]] = {
    "limits.flap_connects_per_client": FLAP_LIMIT,
    "limits.flap_window": 60.0,
    "limits.flap_ban_duration": 60.0,
}
# Generous slack for the close: the broker checks timeouts about once a second.
CLOSE_SLACK: Final = 3.0


def _closed_within(sock: socket.socket, deadline: float, trickle: bytes = b"") -> float | None:
    """Wait for the broker to close ``sock`` (sending ``trickle`` one byte every 0.2 s);
    returns when it closed (monotonic), or None if it was still open at ``deadline``."""
    pending = bytearray(trickle)
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(min(remaining, 0.2))
        try:
            if not sock.recv(1024):
                return time.monotonic()
        except TimeoutError:
            pass
        except ConnectionError:
            return time.monotonic()
        if pending:
            try:
                sock.send(bytes(pending[:1]))
            except OSError:
                return time.monotonic()
            del pending[:1]
    return None


def test_slowloris_connections_are_closed(broker_factory: BrokerFactory, mqtt: Clients) -> None:
    """Thirty connections that never finish their CONNECT — one of them trickling it a byte at
    a time — are all closed after the timeout; a real client connects and works meanwhile."""
    server = broker_factory(**hardened_config(SLOWLORIS))
    attacker = loopback_address()
    connect = encode_connect(unique(ALICE), username=ALICE, password=PASSWORDS[ALICE].encode())
    sockets = [
        socket.create_connection((HOST, server.port), timeout=5.0, source_address=(attacker, 0))
        for _ in range(30)
    ]
    try:
        opened = time.monotonic()
        bystanders = Bystanders(mqtt, server)
        bystanders.exchange()
        deadline = opened + CONNECT_TIMEOUT + CLOSE_SLACK
        closed_at = [_closed_within(sockets[0], deadline, trickle=connect[:-1])]
        closed_at += [_closed_within(sock, deadline) for sock in sockets[1:]]
        open_ids = [n for n, t in enumerate(closed_at) if t is None]
        assert not open_ids, f"half-open connections {open_ids} (0 trickles) outlived the timeout"
        bystanders.exchange()  # the established clients were not timed out with them
    finally:
        for sock in sockets:
            sock.close()


def _storm(
    mqtt: Clients, server: Broker, attacker: str, attempts: int
) -> tuple[list[LoginOutcome], float]:
    """``attempts`` logins from one IP, all opened at once, then all answers collected."""
    start = time.monotonic()
    pending = [
        start_login(mqtt, server, username=BOB, password=PASSWORDS[BOB].encode(), source=attacker)
        for _ in range(attempts)
    ]
    opened = time.monotonic() - start
    outcomes = [p.finish(10.0) for p in pending]
    for outcome in outcomes:
        if outcome.client is not None:
            outcome.client.disconnect()
    return outcomes, opened


def test_connection_storm_from_one_ip_is_capped(
    broker_factory: BrokerFactory, mqtt: Clients
) -> None:
    server = broker_factory(**hardened_config(STORM))
    attacker = loopback_address()
    established = connect_as(mqtt, server, ALICE, source=attacker)  # same IP, before the storm
    topic = f"sec/alice/{unique('storm')}"
    assert established.subscribe(topic, 1) == [1]

    outcomes, opened = _storm(mqtt, server, attacker, 40)
    accepted = sum(1 for o in outcomes if o.accepted)
    budget = BURST_PER_IP + RATE_PER_IP * opened
    assert accepted <= budget + 3, (
        f"{accepted} of 40 connections opened in {opened:.2f}s from one IP were accepted; the "
        f"cap is {RATE_PER_IP:.0f}/s with a burst of {BURST_PER_IP:.0f}"
    )
    refused = [o for o in outcomes if not o.accepted]
    assert refused and all(o.closed for o in refused), refused[:3]

    # The established client on the storming IP still works, and so does a new one elsewhere.
    established.publish(topic, b"still here", 1)
    assert established.expect().payload == b"still here"
    bystanders = Bystanders(mqtt, server)
    bystanders.exchange()


def test_concurrent_connections_per_ip_are_capped(
    broker_factory: BrokerFactory, mqtt: Clients
) -> None:
    server = broker_factory(**hardened_config(CONCURRENT))
    attacker = loopback_address()
    held: list[RawClient] = []
    for _ in range(MAX_PER_IP):
        outcome = try_login(
            mqtt, server, username=BOB, password=PASSWORDS[BOB].encode(), source=attacker
        )
        assert outcome.accepted and outcome.client is not None, outcome
        held.append(outcome.client)
    extra = [
        start_login(mqtt, server, username=BOB, password=PASSWORDS[BOB].encode(), source=attacker)
        for _ in range(3)
    ]
    for pending in extra:
        outcome = pending.finish(5.0)
        assert not outcome.accepted and outcome.closed, f"over the per-IP cap: {outcome}"
    for client in held:  # the ones inside the cap keep working
        client.ping()
    Bystanders(mqtt, server).exchange()  # other IPs are not affected


def test_reconnect_storm_bans_the_client_id(broker_factory: BrokerFactory, mqtt: Clients) -> None:
    server = broker_factory(**hardened_config(FLAPPING))
    bystanders = Bystanders(mqtt, server)
    attacker = loopback_address()
    flapper = unique(CAROL)
    outcomes: list[LoginOutcome] = []
    for _ in range(FLAP_LIMIT + 3):
        outcome = try_login(
            mqtt,
            server,
            MQTT_5,
            username=CAROL,
            password=PASSWORDS[CAROL].encode(),
            client_id=flapper,
            source=attacker,
        )
        if outcome.client is not None:
            outcome.client.abort()
        outcomes.append(outcome)
    accepted = [o.accepted for o in outcomes]
    assert all(accepted[:FLAP_LIMIT]), accepted
    assert not any(accepted[FLAP_LIMIT + 1 :]), f"flapping client id never banned: {accepted}"
    banned = outcomes[-1]
    assert banned.closed and banned.code in (
        None,
        BANNED,
        NOT_AUTHORIZED,
        CONNECTION_RATE_EXCEEDED,
    ), banned
    bystanders.exchange()
    other = try_login(mqtt, server, username=CAROL, password=PASSWORDS[CAROL].encode())
    assert other.accepted, f"the same user with another client id: {other}"
