"""08 reload on SIGHUP: a rewritten ACL file re-checks the subscriptions clients already hold,
and a re-issued server certificate serves new TLS handshakes while established TLS connections
carry on — each while bystanders on the same broker keep exchanging messages.

Every broker here has files of its own in ``tmp_path`` (an ACL copy, a PKI copy), so editing
them never touches the session's deployment. Every wait after a SIGHUP is a bounded poll.
mosquitto reloads differently (it keeps existing subscriptions and its listeners' certificates),
so these tests are Bastion-only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Final

import pytest

from support.brokerproc import HOST, Broker, bastion_cli, bastion_only
from support.clients import BrokerFactory, Clients, unique
from support.pahoclient import V5, V311, PahoClient

from .deployment import ACL_TEXT, ADMIN, ALICE, BOB, Credentials, Pki, hardened_config
from .harness import NOT_AUTHORIZED, WAIT, Bystanders, connect_as, expect_first, topic_ns
from .tlsclients import verifying_context

pytestmark = pytest.mark.security

RELOAD_DEADLINE: Final = 5.0  # seconds a SIGHUP may take to show
POLL: Final = 0.1
# The rule that lets alice read sec/shared/# (see ACL_TEXT); the reload takes it away.
ALICE_SHARED_READ: Final = "topic read sec/shared/#\n"


# ----------------------------------------------------------------- ACL reload


def _write_acl(path: Path, text: str) -> None:
    """Replace the ACL file in one step, so a reload never reads half a file."""
    staging = path.with_name(path.name + ".new")
    staging.write_text(text)
    staging.replace(path)


def _sentinel_round(
    receivers: list[PahoClient], bob: PahoClient, admin: PahoClient, revoked: str, sentinel: str
) -> list[list[bytes]]:
    """Bob publishes on the revoked topic, then admin a sentinel alice may still read; returns,
    per receiver, the payloads of the revoked topic it got before the sentinel (empty: none)."""
    probe = unique("probe").encode()
    assert bob.publish(revoked, probe, 1) == 0, f"bob may write {revoked}"
    payload = unique("sentinel").encode()
    admin.publish(sentinel, payload, 1)
    message = admin.expect()  # other users' grants on the topic are untouched
    assert (message.topic, message.payload) == (revoked, probe)
    result: list[list[bytes]] = []
    for client in receivers:
        leaked: list[bytes] = []
        deadline = time.monotonic() + WAIT
        while True:
            message = client.expect(max(deadline - time.monotonic(), 0.001))
            if (message.topic, message.payload) == (sentinel, payload):
                break
            assert (message.topic, message.payload) == (revoked, probe), (
                f"{client.client_id} got {message.topic!r} {message.payload[:60]!r}"
            )
            leaked.append(message.payload)
        result.append(leaked)
    return result


@bastion_only("mosquitto's reload does not re-check existing subscriptions")
def test_acl_reload_on_sighup_rechecks_existing_subscriptions(
    broker_factory: BrokerFactory, credentials: Credentials, mqtt: Clients, tmp_path: Path
) -> None:
    """Alice may read sec/shared/#, subscribes, loses the grant by SIGHUP: no more deliveries
    on her old subscription, SUBACK 0x87 for a new one, her other rules and other users intact."""
    assert ALICE_SHARED_READ in ACL_TEXT
    acl_file = tmp_path / "reload" / "acl"
    acl_file.parent.mkdir(parents=True)
    _write_acl(acl_file, ACL_TEXT)
    setup = dataclasses.replace(credentials.setup(), acl_file=acl_file)
    server = broker_factory(setup=setup, **hardened_config())
    bystanders = Bystanders(mqtt, server, BOB)

    ns = topic_ns()
    revoked, sentinel = f"sec/shared/{ns}/news", f"sec/alice/{ns}/sentinel"
    alice = connect_as(mqtt, server, ALICE, V5)
    alice_311 = connect_as(mqtt, server, ALICE, V311)
    bob = connect_as(mqtt, server, BOB, V5)
    admin = connect_as(mqtt, server, ADMIN, V5)  # reads sec/#: keeps getting sec/shared/
    for client in (alice, alice_311):
        assert client.subscribe(revoked, 1) == [1]
        assert client.subscribe(sentinel, 1) == [1]
    assert admin.subscribe(f"sec/shared/{ns}/#", 1) == [1]

    # Control: before the reload alice does get the shared topic, ahead of the sentinel.
    receivers = [alice, alice_311]
    assert [len(got) for got in _sentinel_round(receivers, bob, admin, revoked, sentinel)] == [
        1,
        1,
    ]

    _write_acl(acl_file, ACL_TEXT.replace(ALICE_SHARED_READ, ""))
    server.send_signal(signal.SIGHUP)

    deadline = time.monotonic() + RELOAD_DEADLINE
    while True:
        leaked = _sentinel_round(receivers, bob, admin, revoked, sentinel)
        if not any(leaked) or time.monotonic() > deadline:
            break
        time.sleep(POLL)
    assert not any(leaked), (
        f"{RELOAD_DEADLINE}s after SIGHUP, alice's old subscriptions to {revoked} still deliver "
        f"(v5, 3.1.1: {leaked}) although the reloaded ACL no longer lets her read it"
    )

    # Settled: a second round leaks nothing either, and nothing arrives late.
    assert _sentinel_round(receivers, bob, admin, revoked, sentinel) == [[], []]
    alice.expect_none(0.5)
    alice_311.expect_none(0.5)

    # A fresh SUBSCRIBE to the revoked filter is refused, on the old and on a new connection.
    assert alice.subscribe(revoked, 1) == [NOT_AUTHORIZED]
    fresh = connect_as(mqtt, server, ALICE, V5)
    assert fresh.subscribe(revoked, 1) == [NOT_AUTHORIZED]
    assert fresh.subscribe(sentinel, 1) == [1]  # the rest of alice's rules still apply
    for client in (alice, fresh):
        assert client.is_connected(), f"{client.client_id} was disconnected by the reload"
    bob.publish(revoked, b"after resubscribe", 1)
    admin.publish(sentinel, b"last sentinel", 1)
    expect_first(alice, sentinel, b"last sentinel")
    expect_first(fresh, sentinel, b"last sentinel")
    message = admin.expect()
    assert (message.topic, message.payload) == (revoked, b"after resubscribe")
    bystanders.exchange()


# ----------------------------------------------------------------- certificate reload


def _fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _file_fingerprint(certfile: Path) -> str:
    return _fingerprint(ssl.PEM_cert_to_DER_cert(certfile.read_text()))


def _presented_fingerprint(port: int, context: ssl.SSLContext) -> str:
    """SHA-256 of the certificate the broker presents in a new, verified TLS handshake."""
    with (
        socket.create_connection((HOST, port), timeout=WAIT) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None, "the broker presented no certificate"
    return _fingerprint(der)


def _reissue_server_certificate(directory: Path) -> None:
    result = subprocess.run(
        [*bastion_cli(), "pki", "server", "--dir", str(directory), "--force"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, (
        f"bastion pki server --force exited {result.returncode}\n{result.stdout}{result.stderr}"
    )


def _tls_port(broker: Broker) -> int:
    assert broker.tls_port is not None, "this broker has no TLS listener"
    return broker.tls_port


def _exchange(sender: PahoClient, receivers: list[PahoClient], topic: str, payload: bytes) -> None:
    sender.publish(topic, payload, 1)
    for client in receivers:
        expect_first(client, topic, payload)


@bastion_only("mosquitto does not reload listener certificates on SIGHUP the same way")
def test_tls_certificate_reload_keeps_connections(
    broker_factory: BrokerFactory,
    credentials: Credentials,
    pki: Pki,
    mqtt: Clients,
    tmp_path: Path,
) -> None:
    """Re-issue server.crt/server.key in place, SIGHUP: new handshakes get the new certificate,
    the TLS connection opened before the reload keeps publishing and receiving."""
    own = Pki(tmp_path / "pki")
    shutil.copytree(pki.directory, own.directory)
    server = broker_factory(setup=credentials.setup(tls=own.listener()), **hardened_config())
    port = _tls_port(server)
    context = verifying_context(own.ca)
    bystanders = Bystanders(mqtt, server, BOB)

    old_fingerprint = _file_fingerprint(own.directory / "server.crt")
    assert _presented_fingerprint(port, context) == old_fingerprint
    topic = f"sec/alice/{topic_ns()}/tls"
    veteran = connect_as(mqtt, server, ALICE, V5, tls=context)
    assert veteran.subscribe(topic, 1) == [1]
    _exchange(veteran, [veteran], topic, b"before reload")

    _reissue_server_certificate(own.directory)
    new_fingerprint = _file_fingerprint(own.directory / "server.crt")
    assert new_fingerprint != old_fingerprint, "bastion pki server --force wrote the same cert"
    server.send_signal(signal.SIGHUP)

    deadline = time.monotonic() + RELOAD_DEADLINE
    while True:
        presented = _presented_fingerprint(port, context)
        if presented == new_fingerprint or time.monotonic() > deadline:
            break
        time.sleep(POLL)
    assert presented == new_fingerprint, (
        f"{RELOAD_DEADLINE}s after SIGHUP a new handshake still presents "
        f"{'the old' if presented == old_fingerprint else 'an unknown'} certificate {presented}, "
        f"expected the re-issued {new_fingerprint}"
    )

    # The connection from before the reload was not dropped and still works both ways,
    # also with a client that logged in over the new certificate.
    assert veteran.is_connected() and veteran.disconnected_info() is None, (
        f"the TLS connection opened before the reload was dropped: {veteran.disconnected_info()}"
    )
    _exchange(veteran, [veteran], topic, b"after reload")
    newcomer = connect_as(mqtt, server, ALICE, V311, tls=context)
    assert newcomer.subscribe(topic, 1) == [1]
    _exchange(veteran, [veteran, newcomer], topic, b"old to both")
    _exchange(newcomer, [veteran, newcomer], topic, b"new to both")
    assert veteran.is_connected() and veteran.disconnected_info() is None
    bystanders.exchange()
