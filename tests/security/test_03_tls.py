"""03 TLS: the listener speaks TLS 1.3 by default, TLS 1.2 only when configured, never TLS 1.0
or 1.1 (with a control proving the obsolete client really speaks them, against ``openssl
s_server``), nothing to a plain MQTT client, and only to certified clients under mTLS.

Brokers: ``--tls-listen HOST:PORT --certfile F --keyfile F [--cafile F --require-certificate]``
with certificates from ``bastion pki``; the TLS 1.2 minimum comes from the TOML file
(``[listeners.tls] min_version = "1.2"``). mosquitto is told the equivalent ``tls_version``.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.brokerproc import BROKER_KIND, HOST, Broker, start_broker
from support.clients import BrokerFactory, Clients, stop_and_check, unique
from support.pahoclient import V5, V311
from support.rawclient import encode_connect

from .deployment import ALICE, BOB, PASSWORDS, Credentials, Pki, hardened_config, make_pki
from .harness import LoginOutcome, connect_as, try_login
from .tlsclients import (
    handshake,
    legacy_context,
    openssl_client,
    openssl_server,
    require_control,
    verifying_context,
)

pytestmark = pytest.mark.security

LEGACY = pytest.mark.parametrize(
    "legacy", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1.0", "TLSv1.1"]
)


@pytest.fixture(scope="module")
def tls_broker(
    tmp_path_factory: pytest.TempPathFactory, credentials: Credentials, pki: Pki
) -> Iterator[Broker]:
    """Hardened, with a TLS listener at the default minimum (1.3)."""
    started = start_broker(
        tmp_path_factory.mktemp("tls13"),
        name=f"{BROKER_KIND}-tls13",
        setup=credentials.setup(tls=pki.listener()),
        **hardened_config(),
    )
    yield started
    stop_and_check(started)


@pytest.fixture(scope="module")
def tls12_broker(
    tmp_path_factory: pytest.TempPathFactory, credentials: Credentials, pki: Pki
) -> Iterator[Broker]:
    """The weakest TLS an operator can configure: minimum TLS 1.2."""
    started = start_broker(
        tmp_path_factory.mktemp("tls12"),
        name=f"{BROKER_KIND}-tls12",
        setup=credentials.setup(tls=pki.listener(min_version="1.2")),
        **hardened_config(),
    )
    yield started
    stop_and_check(started)


def _tls_port(broker: Broker) -> int:
    assert broker.tls_port is not None
    return broker.tls_port


def _login(mqtt: Clients, broker: Broker, context: ssl.SSLContext, user: str) -> LoginOutcome:
    return try_login(mqtt, broker, username=user, password=PASSWORDS[user].encode(), tls=context)


def _works_over_tls(mqtt: Clients, broker: Broker, pki: Pki) -> None:
    """A well-behaved TLS 1.3 client: verified server, login, a message both ways."""
    context = verifying_context(pki.ca)
    topic = f"sec/users/{BOB}/{unique('tls')}"
    receiver = connect_as(mqtt, broker, BOB, V311, tls=context)
    assert receiver.subscribe(topic, 1) == [1]
    sender = connect_as(mqtt, broker, BOB, V5, tls=context)
    sender.publish(topic, b"over tls", 1)
    assert receiver.expect().payload == b"over tls"


# ----------------------------------------------------------------- versions


def test_tls13_is_the_default(tls_broker: Broker, mqtt: Clients, pki: Pki) -> None:
    outcome = _login(mqtt, tls_broker, verifying_context(pki.ca), ALICE)
    assert outcome.accepted, outcome
    assert outcome.client is not None and outcome.client.tls_version == "TLSv1.3"
    _works_over_tls(mqtt, tls_broker, pki)


def test_tls12_is_refused_by_default(tls_broker: Broker, mqtt: Clients, pki: Pki) -> None:
    result = handshake(
        _tls_port(tls_broker), verifying_context(pki.ca, max_version=ssl.TLSVersion.TLSv1_2)
    )
    assert not result.ok, f"a TLS 1.2 client got {result.version} from a 1.3-only listener"
    _works_over_tls(mqtt, tls_broker, pki)


def test_tls12_is_accepted_when_configured(tls12_broker: Broker, mqtt: Clients, pki: Pki) -> None:
    context = verifying_context(pki.ca, max_version=ssl.TLSVersion.TLSv1_2)
    assert handshake(_tls_port(tls12_broker), context).version == "TLSv1.2"
    outcome = _login(mqtt, tls12_broker, context, ALICE)
    assert outcome.accepted, outcome
    assert outcome.client is not None and outcome.client.tls_version == "TLSv1.2"
    _works_over_tls(mqtt, tls12_broker, pki)  # and 1.3 still works


@LEGACY
@pytest.mark.parametrize("minimum", ["default", "1.2"])
def test_tls10_and_tls11_are_refused(
    *,
    tls_broker: Broker,
    tls12_broker: Broker,
    mqtt: Clients,
    pki: Pki,
    legacy: ssl.TLSVersion,
    minimum: str,
) -> None:
    server_files = (pki.directory / "server.crt", pki.directory / "server.key")
    with openssl_server(*server_files, legacy) as control_port:
        control = handshake(control_port, legacy_context(legacy), server_hostname=None)
    require_control(
        control.version == legacy.name.replace("_", "."),
        f"control: this client cannot speak {legacy.name} even to openssl s_server "
        f"({control.error}), so a refusal by the broker would prove nothing",
    )
    broker = tls_broker if minimum == "default" else tls12_broker
    result = handshake(_tls_port(broker), legacy_context(legacy), server_hostname=None)
    assert not result.ok, f"{legacy.name} handshake accepted: {result.version}"
    _works_over_tls(mqtt, broker, pki)


@LEGACY
def test_openssl_s_client_with_obsolete_tls_is_refused(
    tls12_broker: Broker, mqtt: Clients, pki: Pki, legacy: ssl.TLSVersion
) -> None:
    server_files = (pki.directory / "server.crt", pki.directory / "server.key")
    with openssl_server(*server_files, legacy) as control_port:
        control = openssl_client(control_port, legacy)
    require_control(
        control == legacy.name.replace("_", "."),
        f"control: openssl s_client {legacy.name} got {control} from openssl s_server",
    )
    assert openssl_client(_tls_port(tls12_broker), legacy) is None
    _works_over_tls(mqtt, tls12_broker, pki)


# ----------------------------------------------------------------- not TLS at all


def _plain_exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send ``data`` in clear text; return what came back and whether the peer closed."""
    received = b""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                return received, False
            except ConnectionError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
    return received, False


@pytest.mark.parametrize("version", [V5, V311], ids=["v5", "v311"])
def test_plain_mqtt_on_the_tls_port_fails(
    tls_broker: Broker, mqtt: Clients, pki: Pki, version: int
) -> None:
    connect = encode_connect(
        unique(ALICE), version=version, username=ALICE, password=PASSWORDS[ALICE].encode()
    )
    received, closed = _plain_exchange(_tls_port(tls_broker), connect)
    assert not received.startswith(b"\x20"), f"plain CONNECT got a CONNACK: {received!r}"
    assert closed, "the TLS listener kept a clear-text MQTT connection open"
    _works_over_tls(mqtt, tls_broker, pki)


# ----------------------------------------------------------------- client certificates


def test_client_certificate_required(
    broker_factory: BrokerFactory, credentials: Credentials, mqtt: Clients, pki: Pki, tmp_path: Path
) -> None:
    """mTLS: no certificate, or one from another CA, gets no MQTT session; ours does."""
    server = broker_factory(
        setup=credentials.setup(tls=pki.listener(require_certificate=True)), **hardened_config()
    )
    stranger_ca = make_pki(tmp_path / "stranger", clients=(ALICE,))
    refused = {
        "no certificate": verifying_context(pki.ca),
        "another CA's certificate": verifying_context(
            pki.ca, cert=stranger_ca.client(ALICE)[0], key=stranger_ca.client(ALICE)[1]
        ),
    }
    for what, context in refused.items():
        outcome = _login(mqtt, server, context, ALICE)
        assert outcome.connack is None and outcome.closed, f"{what}: {outcome}"
    cert, key = pki.client(ALICE)
    outcome = _login(mqtt, server, verifying_context(pki.ca, cert=cert, key=key), ALICE)
    assert outcome.accepted, f"a certificate from our CA plus the password: {outcome}"
    bob_cert, bob_key = pki.client(BOB)
    bob_context = verifying_context(pki.ca, cert=bob_cert, key=bob_key)
    topic = f"sec/users/{BOB}/{unique('mtls')}"
    receiver = connect_as(mqtt, server, BOB, V311, tls=bob_context)
    assert receiver.subscribe(topic, 1) == [1]
    connect_as(mqtt, server, BOB, V5, tls=bob_context).publish(topic, b"mutual", 1)
    assert receiver.expect().payload == b"mutual"
