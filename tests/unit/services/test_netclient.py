"""The services' MQTT client without a broker: endpoint checks, TLS context, retry schedule,
error wording, run bounds, session settings, and giving up when nothing listens (real sockets
on 127.0.0.1). Sessions and acknowledgements against a broker: tests/services."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from bastion.errors import ConfigError
from bastion.security.pki import init_ca, issue_client
from bastion.services import endpoint as endpoint_module
from bastion.services.endpoint import describe_refusal
from bastion.services.netclient import (
    MAX_SESSION_EXPIRY,
    Backoff,
    ConnectError,
    Endpoint,
    RunBounds,
    ServiceClient,
    describe_socket_error,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_ca(directory)
    issue_client(directory, "sensor1")
    return directory


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_endpoint_defaults_and_url() -> None:
    endpoint = Endpoint(client_id="sensor1")
    assert (endpoint.host, endpoint.port, endpoint.keepalive) == ("127.0.0.1", 8883, 30)
    assert not endpoint.tls
    assert endpoint.url() == "mqtt://127.0.0.1:8883"
    assert Endpoint(host="::1", cafile=Path("ca.crt")).url() == "mqtts://[::1]:8883"
    assert "secret" not in repr(Endpoint(username="u", password="secret"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 0}, "port must be 1-65535"),
        ({"port": 65536}, "port must be 1-65535"),
        ({"host": ""}, "host must not be empty"),
        ({"keepalive": -1}, "keepalive"),
        ({"certfile": Path("c.crt"), "cafile": Path("ca")}, "both certfile and keyfile"),
        ({"certfile": Path("c"), "keyfile": Path("k")}, "needs TLS"),
        ({"password": "pw"}, "password needs a username"),
    ],
)
def test_endpoint_refuses_inconsistent_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Endpoint(**kwargs)  # type: ignore[arg-type]


def test_tls_context_verifies_the_server_and_refuses_old_versions(pki: Path) -> None:
    assert Endpoint().ssl_context() is None
    context = Endpoint(cafile=pki / "ca.crt").ssl_context()
    assert context is not None
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.get_ca_certs()[0]["subject"] == ((("commonName", "Bastion Dev CA"),),)


def test_tls_context_loads_a_client_certificate(pki: Path) -> None:
    endpoint = Endpoint(
        cafile=pki / "ca.crt", certfile=pki / "sensor1.crt", keyfile=pki / "sensor1.key"
    )
    assert endpoint.ssl_context() is not None
    mismatched = Endpoint(
        cafile=pki / "ca.crt", certfile=pki / "sensor1.crt", keyfile=pki / "server.key"
    )
    with pytest.raises(ConfigError, match=r"cannot load client certificate .*sensor1\.crt"):
        mismatched.ssl_context()


def test_unusable_ca_files_are_one_line_config_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.crt"
    garbage.write_text("not a certificate\n")
    for path in (garbage, tmp_path / "missing.crt"):
        with pytest.raises(ConfigError, match="cannot load CA file") as info:
            Endpoint(cafile=path).ssl_context()
        assert "\n" not in str(info.value)


def test_backoff_doubles_up_to_the_maximum_with_jitter() -> None:
    backoff = Backoff(first=0.5, maximum=4.0, attempts=5)
    for failures, base in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        for _ in range(20):
            assert 0.8 * base <= backoff.delay(failures) <= base
    with pytest.raises(ConfigError):
        Backoff(first=0.0)
    with pytest.raises(ConfigError):
        Backoff(first=2.0, maximum=1.0)
    with pytest.raises(ConfigError):
        Backoff(attempts=0)


def test_socket_errors_are_described_in_one_line() -> None:
    endpoint = Endpoint(host="broker.example", port=8883)
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    cases: list[tuple[OSError, str, bool]] = [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused by", False),
        (verify, "TLS certificate verification failed for broker.example:8883: unable", True),
        (TimeoutError("timed out"), "timed out connecting to broker.example:8883", False),
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve host", False),
        (OSError(113, "No route to host"), "No route to host", False),
    ]
    for error, text, permanent in cases:
        message, is_permanent = describe_socket_error(error, endpoint)
        assert text in message
        assert "\n" not in message
        assert is_permanent is permanent


def test_run_bounds_end_on_stop_or_duration() -> None:
    stop = threading.Event()
    open_ended = RunBounds(stop)
    assert open_ended.remaining() is None
    assert not open_ended.done()
    stop.set()
    assert open_ended.done()
    open_ended.wait(60.0)  # returns at once: the run has ended
    expired = RunBounds(threading.Event(), duration=0.0)
    assert expired.remaining() == 0.0
    assert expired.done()
    long = RunBounds(threading.Event(), duration=3600.0)
    remaining = long.remaining()
    assert remaining is not None and 3590.0 < remaining <= 3600.0
    assert not long.done()


def test_publishing_while_not_connected_is_dropped_and_counted() -> None:
    client = ServiceClient(Endpoint(port=unused_port(), client_id="t"))
    delivery = client.publish("temp/t", b"x", qos=1)
    assert not delivery.accepted
    assert not delivery.wait(0.0)
    assert client.stats.not_connected == 1
    client.stop()
    assert client.finished


def test_nothing_listening_is_retried_then_given_up() -> None:
    port = unused_port()
    client = ServiceClient(
        Endpoint(port=port, client_id="t"), backoff=Backoff(first=0.01, maximum=0.02, attempts=3)
    )
    with pytest.raises(ConnectError, match=f"connection refused by 127.0.0.1:{port}") as info:
        client.connect(timeout=30.0)
    assert "giving up after 3 attempts" in str(info.value)
    assert not info.value.permanent
    assert client.stats.connect_failures == 3
    client.stop()
    assert client.finished
    assert client.failure is info.value


def test_connect_can_be_cancelled() -> None:
    cancel = threading.Event()
    cancel.set()
    client = ServiceClient(
        Endpoint(port=unused_port(), client_id="t"), backoff=Backoff(first=5.0, maximum=5.0)
    )
    assert client.connect(timeout=30.0, cancel=cancel) is False
    client.stop()
    assert client.finished


def test_netclient_re_exports_the_endpoint_names() -> None:
    assert Endpoint is endpoint_module.Endpoint
    assert ConnectError is endpoint_module.ConnectError
    assert describe_socket_error is endpoint_module.describe_socket_error


def test_connack_refusals_say_whether_retrying_helps() -> None:
    endpoint = Endpoint(port=1883)
    refused = describe_refusal(
        ReasonCode(PacketTypes.CONNACK, "Bad user name or password"), endpoint
    )
    assert str(refused) == (
        "mqtt://127.0.0.1:1883 refused the connection: Bad user name or password (0x86)"
    )
    assert refused.permanent
    busy = describe_refusal(ReasonCode(PacketTypes.CONNACK, "Server busy"), endpoint)
    assert not busy.permanent


def test_session_expiry_must_fit_the_protocol() -> None:
    for bad in (-1, MAX_SESSION_EXPIRY + 1):
        with pytest.raises(ConfigError, match="session expiry"):
            ServiceClient(Endpoint(client_id="t"), clean_start=False, session_expiry=bad)
    kept = ServiceClient(Endpoint(client_id="t"), clean_start=False, session_expiry=3600)
    kept.stop()
    assert kept.finished and not kept.session_present


def test_run_bounds_messages_end_with_the_run_or_the_clients_failure() -> None:
    client = ServiceClient(
        Endpoint(port=unused_port(), client_id="t"),
        backoff=Backoff(first=0.01, maximum=0.02, attempts=2),
    )
    assert list(RunBounds(threading.Event(), duration=0.0).messages(client)) == []
    with pytest.raises(ConnectError):
        client.connect(timeout=30.0)
    running = RunBounds(threading.Event(), duration=30.0)
    with pytest.raises(ConnectError, match="connection refused by"):
        next(running.messages(client))
    client.stop()
