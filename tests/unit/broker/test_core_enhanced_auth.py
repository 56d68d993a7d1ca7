"""Core tests for MQTT 5 enhanced authentication outcomes: CONNACK, refusals, re-auth.

The transport runs the AUTH exchange and hands the outcome to ``Broker.connect`` as an
``AuthResult``; here that result is given by hand.
"""

from __future__ import annotations

from brokerkit import Client, FakeLink, Harness

from bastion.mqtt.packets import Auth, Connect, Properties
from bastion.mqtt.reason_codes import ReasonCode
from bastion.security.policy import AuthResult, ClientIdentity, Policy

METHOD = "SCRAM-SHA-256"


def connect_with(
    h: Harness, result: AuthResult | None, *, method: str | None = METHOD, version: int = 5
) -> Client:
    link = FakeLink(protocol_version=version)
    props = Properties(authentication_method=method, authentication_data=b"n,,n=u,r=abc")
    packet = Connect(version, "c1", properties=props if version == 5 else Properties())
    session = h.broker.connect(link, packet, h.now, auth=result)
    return Client(h, link, session)


def success(data: bytes | None = b"v=server-final") -> AuthResult:
    identity = ClientIdentity("c1", "u", "127.0.0.1:50000")
    return AuthResult(0, identity, auth_method=METHOD, auth_data=data)


def test_connack_carries_the_method_and_server_final() -> None:
    h = Harness(Policy())
    client = connect_with(h, success())
    assert client.connack.reason_code == 0
    props = client.connack.properties
    assert props.authentication_method == METHOD
    assert props.authentication_data == b"v=server-final"
    assert client.live.identity.username == "u"
    assert client.live.auth_method == METHOD


def test_a_plain_connect_gets_no_authentication_properties() -> None:
    h = Harness()
    client = h.connect("plain")
    assert client.connack.properties.authentication_method is None
    assert client.connack.properties.authentication_data is None
    assert client.live.auth_method is None


def test_a_method_the_transport_did_not_run_is_refused() -> None:
    h = Harness(Policy(allow_anonymous=True))
    assert connect_with(h, None).connack.reason_code == ReasonCode.BAD_AUTHENTICATION_METHOD
    plain_ok = AuthResult(0, ClientIdentity("c1", None, "p"))  # a password answer, no method
    assert connect_with(h, plain_ok).connack.reason_code == ReasonCode.BAD_AUTHENTICATION_METHOD
    other = AuthResult(0, ClientIdentity("c1", "u", "p"), auth_method="OTHER")
    assert connect_with(h, other).connack.reason_code == ReasonCode.BAD_AUTHENTICATION_METHOD


def test_failures_keep_their_own_reason_code() -> None:
    h = Harness(Policy())
    for code in (
        ReasonCode.BAD_USER_NAME_OR_PASSWORD,
        ReasonCode.BANNED,
        ReasonCode.PROTOCOL_ERROR,
        ReasonCode.BAD_AUTHENTICATION_METHOD,
    ):
        result = AuthResult(code, message="SCRAM-SHA-256: e=invalid-proof", auth_method=METHOD)
        client = connect_with(h, result)
        assert client.session is None
        assert client.connack.reason_code == code
        assert client.connack.properties.authentication_data is None
        assert client.link.closes == [None]
    banned = connect_with(h, AuthResult(ReasonCode.BANNED, message="banned for a while"))
    assert banned.connack.reason_code == ReasonCode.BANNED  # not masked by 0x8C


def test_reauthentication_is_refused_with_0x8c() -> None:
    h = Harness(Policy())
    client = connect_with(h, success())
    client.send(Auth(ReasonCode.REAUTHENTICATE, Properties(authentication_method=METHOD)))
    assert client.link.closes == [ReasonCode.BAD_AUTHENTICATION_METHOD]


def test_auth_outside_an_exchange_is_a_protocol_error() -> None:
    h = Harness(Policy())
    client = connect_with(h, success())
    client.send(Auth(ReasonCode.CONTINUE_AUTHENTICATION, Properties(authentication_method=METHOD)))
    assert client.link.closes == [ReasonCode.PROTOCOL_ERROR]
    plain = Harness().connect("plain")
    plain.send(Auth(ReasonCode.REAUTHENTICATE, Properties(authentication_method=METHOD)))
    assert plain.link.closes == [ReasonCode.PROTOCOL_ERROR]  # no method in its CONNECT


def test_authentication_data_without_a_method_is_a_protocol_error() -> None:
    h = Harness()
    client = h.try_connect("c1", properties=Properties(authentication_data=b"x"))
    assert client.connack.reason_code == ReasonCode.PROTOCOL_ERROR
    assert client.session is None
