"""13 enhanced authentication: MQTT 5 SCRAM-SHA-256 (RFC 7677) in AUTH packets, end to end.

The broker's password file is made with ``bastion passwd`` (``--scram`` for SCRAM users); the
client side of SCRAM is written here from RFC 5802 on the raw-socket client, so the broker's
mechanism is checked against an independent implementation, server-final included.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.brokerproc import Broker, BrokerSetup, bastion_cli, bastion_only, start_broker
from support.clients import Clients, loopback_address, stop_and_check, unique
from support.rawclient import (
    MQTT_5,
    MQTT_311,
    ConnAck,
    Packet,
    PacketType,
    Prop,
    PropList,
    RawClient,
    decode_connack,
    decode_disconnect,
    encode_connect,
    encode_pingreq,
    encode_properties,
    encode_publish,
    packet,
)

pytestmark = [
    pytest.mark.interop,
    bastion_only("mosquitto has no SCRAM-SHA-256 enhanced authentication"),
]

METHOD = "SCRAM-SHA-256"
CONNECT_TIMEOUT = 2.0  # mqtt.connect_timeout: also bounds the AUTH exchange
CONTINUE, REAUTHENTICATE = 0x18, 0x19
BAD_CREDENTIALS, BAD_METHOD, PROTOCOL_ERROR = 0x86, 0x8C, 0x82

# (username, password, --scram); each test uses its own user so back-off never overlaps.
USERS = (
    ("sensor-scram", "pencil-42", True),
    ("scram-victim", "right-one", True),
    ("scram-reauth", "again-and-again", True),
    ("scram-mixed", "méthode-mixte", True),
    ("plain-user", "argon-only", False),
)
PASSWORDS = {user: password for user, password, _ in USERS}


@pytest.fixture(scope="module")
def scram_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker with no anonymous access and a password file holding SCRAM and argon2id users."""
    workdir = tmp_path_factory.mktemp("scram")
    password_file = workdir / "passwd"
    for user, password, scram in USERS:
        _bastion_passwd(password_file, user, password, scram=scram)
    lines = password_file.read_text().splitlines()
    assert sum(line.startswith("sensor-scram:$scram-sha-256$10000$") for line in lines) == 1
    assert sum(line.startswith("plain-user:$argon2id$") for line in lines) == 1
    broker = start_broker(
        workdir,
        name="scram",
        bastion_toml=f"[mqtt]\nconnect_timeout = {CONNECT_TIMEOUT}\n",
        setup=BrokerSetup(allow_anonymous=False, password_file=password_file),
    )
    yield broker
    stop_and_check(broker)


def _bastion_passwd(path: Path, user: str, password: str, *, scram: bool) -> None:
    command = [*bastion_cli(), "passwd", str(path), user, "--password-stdin"]
    if scram:
        command.append("--scram")
    done = subprocess.run(
        command, input=f"{password}\n".encode(), capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")


# --------------------------------------------------------------------------- SCRAM, client side


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


@dataclass
class ScramClient:
    """The client half of SCRAM-SHA-256 (RFC 5802 §3, §7), no channel binding."""

    username: str
    password: str
    nonce: str = ""
    _bare: str = ""
    _server_signature: bytes = b""

    def client_first(self) -> bytes:
        self.nonce = self.nonce or secrets.token_urlsafe(18)
        name = self.username.replace("=", "=3D").replace(",", "=2C")
        self._bare = f"n={name},r={self.nonce}"
        return f"n,,{self._bare}".encode()

    def client_final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attrs = dict(part.split("=", 1) for part in text.split(","))
        assert attrs["r"].startswith(self.nonce) and len(attrs["r"]) > len(self.nonce), text
        salt, iterations = base64.b64decode(attrs["s"]), int(attrs["i"])
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{self._bare},{text},{without_proof}".encode()
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def check_server_final(self, server_final: bytes) -> None:
        expected = b"v=" + base64.b64encode(self._server_signature)
        assert hmac.compare_digest(server_final, expected), "the server does not know the key"


# --------------------------------------------------------------------------- AUTH on the wire


@dataclass(frozen=True)
class AuthPacket:
    reason_code: int
    method: str | None
    data: bytes | None


def encode_auth(reason: int, method: str | bytes, data: bytes | None = None) -> bytes:
    props: PropList = [(Prop.AUTHENTICATION_METHOD, method)]
    if data is not None:
        props = [*props, (Prop.AUTHENTICATION_DATA, data)]
    return packet(PacketType.AUTH, 0, bytes([reason]) + encode_properties(props))


def decode_auth(pkt: Packet) -> AuthPacket:
    """AUTH's body is CONNACK's without the flags byte: decode it as such (spec 3.15 / 3.2)."""
    assert pkt.type == PacketType.AUTH and pkt.flags == 0, pkt
    ack = decode_connack(Packet(PacketType.CONNACK, 0, b"\x00" + pkt.body), MQTT_5)
    data = ack.properties.get(Prop.AUTHENTICATION_DATA)
    assert data is None or isinstance(data, bytes)
    return AuthPacket(ack.reason_code, ack.properties.get_str(Prop.AUTHENTICATION_METHOD), data)


def scram_connect(raw: RawClient, scram: ScramClient, *, method: str = METHOD) -> AuthPacket:
    """Send CONNECT with client-first and return the broker's first AUTH (server-first)."""
    props: PropList = [
        (Prop.AUTHENTICATION_METHOD, method),
        (Prop.AUTHENTICATION_DATA, scram.client_first()),
    ]
    raw.send(encode_connect(unique("scram"), version=MQTT_5, properties=props))
    first = raw.recv()
    assert first.type == PacketType.AUTH, f"expected AUTH, got {first.name} {first.body!r}"
    return decode_auth(first)


def connack(raw: RawClient) -> ConnAck:
    return decode_connack(raw.expect(PacketType.CONNACK), MQTT_5)


def client(mqtt: Clients, broker: Broker, version: int = MQTT_5) -> RawClient:
    """A raw client on its own loopback address (per-IP back-off stays per test)."""
    return mqtt.raw(broker, version, source=loopback_address())


# --------------------------------------------------------------------------- tests


def test_scram_exchange_succeeds_and_the_server_proves_itself(
    scram_broker: Broker, mqtt: Clients
) -> None:
    raw = client(mqtt, scram_broker)
    scram = ScramClient("sensor-scram", PASSWORDS["sensor-scram"])
    challenge = scram_connect(raw, scram)
    assert (challenge.reason_code, challenge.method) == (CONTINUE, METHOD)
    assert challenge.data is not None
    raw.send(encode_auth(CONTINUE, METHOD, scram.client_final(challenge.data)))
    ack = connack(raw)
    assert ack.reason_code == 0, ack
    assert ack.properties.get_str(Prop.AUTHENTICATION_METHOD) == METHOD
    server_final = ack.properties.get(Prop.AUTHENTICATION_DATA)
    assert isinstance(server_final, bytes)
    scram.check_server_final(server_final)
    raw.send(encode_pingreq())  # a working session
    assert raw.expect(PacketType.PINGRESP).body == b""


def test_scram_user_name_may_be_repeated_in_connect(scram_broker: Broker, mqtt: Clients) -> None:
    raw = client(mqtt, scram_broker)
    scram = ScramClient("scram-mixed", PASSWORDS["scram-mixed"])
    props: PropList = [
        (Prop.AUTHENTICATION_METHOD, METHOD),
        (Prop.AUTHENTICATION_DATA, scram.client_first()),
    ]
    raw.send(encode_connect(unique(), version=MQTT_5, properties=props, username="scram-mixed"))
    challenge = decode_auth(raw.expect(PacketType.AUTH))
    assert challenge.data is not None
    raw.send(encode_auth(CONTINUE, METHOD, scram.client_final(challenge.data)))
    assert connack(raw).reason_code == 0


def test_wrong_password_is_refused_with_0x86(scram_broker: Broker, mqtt: Clients) -> None:
    raw = client(mqtt, scram_broker)
    scram = ScramClient("scram-victim", "not-the-password")
    challenge = scram_connect(raw, scram)
    assert challenge.data is not None
    raw.send(encode_auth(CONTINUE, METHOD, scram.client_final(challenge.data)))
    ack = connack(raw)
    assert ack.reason_code == BAD_CREDENTIALS
    assert not ack.properties.has(Prop.AUTHENTICATION_DATA)
    raw.read_until_closed()


def test_unknown_user_looks_like_a_wrong_password(scram_broker: Broker, mqtt: Clients) -> None:
    answers: list[tuple[AuthPacket, ConnAck]] = []
    for user in ("nobody-here", "nobody-here", "scram-victim"):
        raw = client(mqtt, scram_broker)
        scram = ScramClient(user, "guess")
        challenge = scram_connect(raw, scram)
        assert challenge.data is not None
        raw.send(encode_auth(CONTINUE, METHOD, scram.client_final(challenge.data)))
        answers.append((challenge, connack(raw)))
    unknown, again, known = answers

    def salt_and_count(auth: AuthPacket) -> tuple[bytes, str]:
        assert auth.data is not None
        attrs = dict(part.split("=", 1) for part in auth.data.decode().split(","))
        return base64.b64decode(attrs["s"]), attrs["i"]

    unknown_salt, unknown_count = salt_and_count(unknown[0])
    known_salt, known_count = salt_and_count(known[0])
    assert salt_and_count(again[0]) == (unknown_salt, unknown_count)  # stable, like a real salt
    assert (len(unknown_salt), unknown_count) == (len(known_salt), known_count)
    assert unknown[1].reason_code == known[1].reason_code == BAD_CREDENTIALS
    reason = Prop.REASON_STRING
    assert unknown[1].properties.get(reason) == known[1].properties.get(reason)


def test_unknown_method_is_refused_with_0x8c(scram_broker: Broker, mqtt: Clients) -> None:
    raw = client(mqtt, scram_broker)
    props: PropList = [(Prop.AUTHENTICATION_METHOD, "KERBEROS-V9")]
    raw.send(encode_connect(unique(), version=MQTT_5, properties=props))
    first = raw.recv()
    assert first.type == PacketType.CONNACK, first
    assert decode_connack(first, MQTT_5).reason_code == BAD_METHOD
    raw.read_until_closed()


def test_method_changed_mid_exchange_is_refused_with_0x8c(
    scram_broker: Broker, mqtt: Clients
) -> None:
    raw = client(mqtt, scram_broker)
    scram = ScramClient("sensor-scram", PASSWORDS["sensor-scram"])
    challenge = scram_connect(raw, scram)
    assert challenge.data is not None
    raw.send(encode_auth(CONTINUE, "SCRAM-SHA-1", scram.client_final(challenge.data)))
    assert connack(raw).reason_code == BAD_METHOD
    raw.read_until_closed()


def test_other_packets_during_the_exchange_are_a_protocol_error(
    scram_broker: Broker, mqtt: Clients
) -> None:
    raw = client(mqtt, scram_broker)
    scram_connect(raw, ScramClient("sensor-scram", PASSWORDS["sensor-scram"]))
    raw.send(encode_publish("t/x", b"early", version=MQTT_5))  # [MQTT-3.1.2-30]
    assert connack(raw).reason_code == PROTOCOL_ERROR
    raw.read_until_closed()


def test_silent_client_is_closed_after_connect_timeout(scram_broker: Broker, mqtt: Clients) -> None:
    raw = client(mqtt, scram_broker)
    scram_connect(raw, ScramClient("sensor-scram", PASSWORDS["sensor-scram"]))
    started = time.monotonic()
    assert raw.read_until_closed(timeout=CONNECT_TIMEOUT + 5) == []  # no CONNACK
    assert time.monotonic() - started >= CONNECT_TIMEOUT - 0.5


def test_reauthentication_is_refused_with_disconnect_0x8c(
    scram_broker: Broker, mqtt: Clients
) -> None:
    raw = client(mqtt, scram_broker)
    scram = ScramClient("scram-reauth", PASSWORDS["scram-reauth"])
    challenge = scram_connect(raw, scram)
    assert challenge.data is not None
    raw.send(encode_auth(CONTINUE, METHOD, scram.client_final(challenge.data)))
    assert connack(raw).reason_code == 0
    raw.send(encode_auth(REAUTHENTICATE, METHOD, ScramClient("scram-reauth", "x").client_first()))
    disconnect = decode_disconnect(raw.expect(PacketType.DISCONNECT), MQTT_5)
    assert disconnect.reason_code == BAD_METHOD
    raw.read_until_closed()


def test_auth_without_an_exchange_is_a_protocol_error(scram_broker: Broker, mqtt: Clients) -> None:
    raw = client(mqtt, scram_broker)
    raw.connect(unique(), username="plain-user", password=PASSWORDS["plain-user"].encode())
    raw.send(encode_auth(REAUTHENTICATE, METHOD, b"n,,n=plain-user,r=abc"))
    disconnect = decode_disconnect(raw.expect(PacketType.DISCONNECT), MQTT_5)
    assert disconnect.reason_code == PROTOCOL_ERROR
    raw.read_until_closed()


@pytest.mark.parametrize("version", [MQTT_311, MQTT_5], ids=["v311", "v5"])
@pytest.mark.parametrize("user", ["plain-user", "scram-mixed"])
def test_password_connect_still_works(
    scram_broker: Broker, mqtt: Clients, user: str, version: int
) -> None:
    raw = client(mqtt, scram_broker, version)
    ack = raw.connect(unique(), username=user, password=PASSWORDS[user].encode())
    assert ack.reason_code == 0
    assert not ack.properties.has(Prop.AUTHENTICATION_METHOD)
    wrong = client(mqtt, scram_broker, version)
    refused = wrong.connect(unique(), username=user, password=b"nope", expect_success=False)
    assert refused.reason_code == (BAD_CREDENTIALS if version == MQTT_5 else 4)
    wrong.read_until_closed()
