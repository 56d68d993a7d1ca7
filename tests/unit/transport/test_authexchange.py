"""Unit tests for ``bastion.transport.authexchange``: the AUTH exchange on a fake channel.

The channel records what the server sends and replays scripted client packets; ``None``
stands for a timeout or a lost connection. No sockets, no sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from bastion.mqtt.packets import Auth, Connect, Disconnect, Packet, Pingreq, Properties
from bastion.security.enhanced_auth import AuthStep, Continue, Failure, ScramSha256, Success
from bastion.security.scram import MIN_ITERATIONS, derive_credential
from bastion.transport.authexchange import ExchangeOutcome, run_exchange

METHOD = "SCRAM-SHA-256"
SCRAM = ScramSha256(
    {"user": derive_credential(b"pencil", iterations=MIN_ITERATIONS)}.get, decoy_secret=b"k"
)


@dataclass
class FakeChannel:
    replies: list[Packet | None] = field(default_factory=list)
    sent: list[Packet] = field(default_factory=list)
    timeouts: list[float] = field(default_factory=list)
    fits: bool = True

    def send(self, packet: Packet) -> bool:
        self.sent.append(packet)
        return self.fits

    async def receive(self, timeout: float) -> Packet | None:
        self.timeouts.append(timeout)
        return self.replies.pop(0) if self.replies else None


def connect(method: str = METHOD, data: bytes | None = b"n,,n=user,r=abc") -> Connect:
    return Connect(
        5, "c1", properties=Properties(authentication_method=method, authentication_data=data)
    )


def auth(data: bytes, *, method: str = METHOD, reason: int = 0x18) -> Auth:
    return Auth(reason, Properties(authentication_method=method, authentication_data=data))


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def client_final(server_first: bytes, password: bytes = b"pencil") -> bytes:
    attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password, base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = _hmac(salted, b"Client Key")
    without_proof = f"c=biws,r={attrs['r']}"
    auth_message = f"n=user,r=abc,{server_first.decode()},{without_proof}".encode()
    signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


class AnsweringChannel(FakeChannel):
    """Answers each AUTH from the server with client-final computed from its data."""

    def __init__(self, password: bytes = b"pencil") -> None:
        super().__init__()
        self.password = password

    async def receive(self, timeout: float) -> Packet | None:
        self.timeouts.append(timeout)
        challenge = self.sent[-1]
        assert isinstance(challenge, Auth)
        data = challenge.properties.authentication_data
        assert data is not None
        return auth(client_final(data, self.password))


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


async def run(
    channel: FakeChannel,
    packet: Connect | None = None,
    *,
    check_claim: Callable[[str], Failure | None] | None = None,
) -> ExchangeOutcome:
    return await run_exchange(
        SCRAM, packet or connect(), channel, timeout=10.0, clock=Clock(), check_claim=check_claim
    )


async def test_scram_round_trip_sends_auth_0x18_and_succeeds() -> None:
    channel = AnsweringChannel()
    outcome = await run(channel)
    assert isinstance(outcome.step, Success)
    assert outcome.step.username == outcome.claimed_username == "user"
    assert outcome.step.data is not None and outcome.step.data.startswith(b"v=")
    [challenge] = channel.sent
    assert isinstance(challenge, Auth) and challenge.reason_code == 0x18
    assert challenge.properties.authentication_method == METHOD
    assert (challenge.properties.authentication_data or b"").startswith(b"r=abc")
    assert channel.timeouts == [10.0]


async def test_wrong_password_fails_with_the_claimed_name() -> None:
    outcome = await run(AnsweringChannel(b"nope"))
    assert outcome.step == Failure(0x86, "SCRAM-SHA-256: e=invalid-proof", "user")
    assert outcome.claimed_username == "user"


async def test_method_change_is_0x8c_and_other_packets_are_0x82() -> None:
    changed = await run(FakeChannel([auth(b"x", method="SCRAM-SHA-1")]))
    assert isinstance(changed.step, Failure) and changed.step.reason_code == 0x8C
    for reply in (Pingreq(), auth(b"x", reason=0x19), auth(b"x", reason=0x00)):
        outcome = await run(FakeChannel([reply]))
        assert isinstance(outcome.step, Failure) and outcome.step.reason_code == 0x82, reply


async def test_silence_or_disconnect_ends_without_a_step() -> None:
    for channel in (FakeChannel([None]), FakeChannel([Disconnect()])):
        outcome = await run(channel)
        assert outcome.step is None
        assert outcome.claimed_username == "user"
        assert outcome.detail


async def test_the_deadline_covers_the_whole_exchange() -> None:
    clock = Clock()

    class Slow:
        name = "SLOW"

        def start(self, client_id: str, auth_data: bytes | None) -> AuthStep:
            return Continue(b"1", self)

        def next(self, auth_data: bytes) -> AuthStep:
            clock.now += 4.0
            return Continue(b"2", self)

    channel = FakeChannel([auth(b"a", method="SLOW"), auth(b"b", method="SLOW")])
    outcome = await run_exchange(
        Slow(), connect("SLOW"), channel, timeout=10.0, clock=clock, max_steps=8
    )
    assert outcome.step is None
    assert channel.timeouts == [10.0, 6.0, 2.0]


async def test_steps_are_bounded() -> None:
    class Endless:
        name = "ENDLESS"

        def start(self, client_id: str, auth_data: bytes | None) -> AuthStep:
            return Continue(b"more", self)

        def next(self, auth_data: bytes) -> AuthStep:
            return Continue(b"more", self)

    channel = FakeChannel([auth(b"x", method="ENDLESS") for _ in range(10)])
    outcome = await run_exchange(
        Endless(), connect("ENDLESS"), channel, timeout=10.0, clock=Clock(), max_steps=3
    )
    assert isinstance(outcome.step, Failure) and outcome.step.reason_code == 0x87
    assert len(channel.sent) == 3


async def test_a_banned_claim_ends_the_exchange_before_any_auth() -> None:
    seen: list[str] = []

    def check(name: str) -> Failure | None:
        seen.append(name)
        return Failure(0x8A, "banned", name)

    channel = AnsweringChannel()
    outcome = await run(channel, check_claim=check)
    assert outcome.step == Failure(0x8A, "banned", "user")
    assert seen == ["user"] and channel.sent == []


async def test_one_shot_methods_and_immediate_failures_send_no_auth() -> None:
    class OneShot:
        name = "ONESHOT"

        def start(self, client_id: str, auth_data: bytes | None) -> AuthStep:
            return Success("alice", None) if auth_data == b"ok" else Failure(0x87, "no")

    for data, expected in ((b"ok", Success("alice")), (b"no", Failure(0x87, "no"))):
        channel = FakeChannel()
        outcome = await run_exchange(
            OneShot(), connect("ONESHOT", data), channel, timeout=1.0, clock=Clock()
        )
        assert outcome.step == expected and channel.sent == []
    malformed = await run(FakeChannel(), connect(data=b"garbage"))
    assert isinstance(malformed.step, Failure) and malformed.step.reason_code == 0x86


async def test_a_plugin_that_raises_fails_the_exchange() -> None:
    class Broken:
        name = "BROKEN"

        def start(self, client_id: str, auth_data: bytes | None) -> AuthStep:
            raise RuntimeError("bug")

    outcome = await run_exchange(
        Broken(), connect("BROKEN"), FakeChannel(), timeout=1.0, clock=Clock()
    )
    assert isinstance(outcome.step, Failure) and outcome.step.reason_code == 0x80


async def test_auth_too_large_for_the_client_fails() -> None:
    channel = FakeChannel(fits=False)
    outcome = await run(channel)
    assert isinstance(outcome.step, Failure) and outcome.step.reason_code == 0x80
