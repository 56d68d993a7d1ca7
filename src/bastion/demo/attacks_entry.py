"""Attacks at the door, before any valid credential: an anonymous client, a password brute force
(which must end in a ban), TLS 1.0 and 1.1 handshakes, and plain MQTT on the TLS port.

Each returns an ``AttackResult`` decided from what the broker answered. Run by ``attacks.py``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from bastion.demo.attacks_base import (
    AUTHENTICATION,
    BAN,
    CONNECT_WAIT,
    TLS_REQUIRED,
    AttackContext,
    AttackResult,
)
from bastion.demo.attacks_tls import TLS_1_0, TLS_1_1, accepts_tls, legacy_handshake
from bastion.demo.attacks_wire import RawSession, encode_connect, encode_disconnect, reason_text

__all__ = [
    "anonymous_connect",
    "brute_force",
    "plain_mqtt_on_tls_port",
    "tls_1_0_handshake",
    "tls_1_1_handshake",
]

BANNED: Final = 0x8A
BRUTE_FORCE_USER: Final = "admin"  # no such account in the demo: what attackers try first
GUESSES: Final = (
    "admin", "password", "123456", "bastion", "mqtt", "letmein", "changeme", "iot",
    "root", "qwerty", "admin123", "passw0rd", "default", "broker", "sensor", "secret",
    "12345678", "welcome", "raspberry", "mosquitto", "toor", "guest", "master", "dragon",
    "monkey", "trustno1", "hunter2", "abc123", "1q2w3e", "zaq12wsx",
)  # fmt: skip
GUESS_WAIT: Final = 1.5  # a refused guess's CONNACK is held back (the back-off): don't wait it out
MAX_WAVES: Final = 3
DEFAULT_BAN_AFTER: Final = 10
HANDSHAKE_WAIT: Final = 4.0


# ----------------------------------------------------------------- anonymous connect


async def anonymous_connect(ctx: AttackContext) -> AttackResult:
    """CONNECT with no username and no password, over TLS (and plain TCP if the demo has a
    plain listener). Blocked when every attempt is refused."""
    name = "anonymous connect"
    ports = [(ctx.target.tls_port, True)]
    if ctx.target.plain_port is not None:
        ports.append((ctx.target.plain_port, False))
    seen: list[str] = []
    blocked = True
    for port, tls in ports:
        probe = ctx.probe(ctx.dial(tls=tls, port=port), ctx.client_id("anon", "x"), None)
        try:
            outcome = await asyncio.to_thread(probe.connect, CONNECT_WAIT)
            where = "" if len(ports) == 1 else f" ({'TLS' if tls else 'plain'} port {port})"
            if not outcome.reached:
                blocked = False  # nothing was refused: the broker was never asked
                seen.append(f"not tried{where}: {outcome.detail}")
            elif outcome.reason is None:
                seen.append(f"no session{where}: {outcome.detail}")
            elif outcome.accepted:
                blocked = False
                seen.append(f"CONNACK {reason_text(0)}{where}: connected without credentials")
                await asyncio.to_thread(probe.disconnect)
            else:
                seen.append(f"CONNACK {reason_text(outcome.reason)}{where}")
        finally:
            await asyncio.to_thread(probe.close)
    return AttackResult(name, AUTHENTICATION, blocked, "; ".join(seen))


# ----------------------------------------------------------------- brute force


@dataclass
class _Tally:
    """What the guesses got back."""

    guesses: int = 0
    refused: dict[int, int] = field(default_factory=dict)  # CONNACK reason -> how many
    held: int = 0  # no CONNACK within GUESS_WAIT: the back-off at work
    shut_out: int = 0  # connection closed before CONNECT could be answered (IP ban)
    guessed: str | None = None  # a password that worked (the attack succeeded)

    @property
    def banned(self) -> bool:
        return self.refused.get(BANNED, 0) > 0 or self.shut_out > 0

    def summary(self) -> str:
        parts = [f"{n}x CONNACK {reason_text(code)}" for code, n in sorted(self.refused.items())]
        if self.held:
            parts.append(f"{self.held}x answer held back over {GUESS_WAIT:g} s (back-off)")
        if self.shut_out:
            parts.append(f"{self.shut_out}x refused at connect (source banned)")
        return ", ".join(parts) or "no answers"


def _password(n: int) -> str:
    return GUESSES[n] if n < len(GUESSES) else f"guess{n}"


async def _guess(ctx: AttackContext, source: str | None, password: str, tally: _Tally) -> None:
    attempt = await ctx.raw_connect(
        BRUTE_FORCE_USER,
        f"{BRUTE_FORCE_USER}-{ctx.run_id}",
        dial=ctx.dial_from(source),
        password=password,
        timeout=GUESS_WAIT,
    )
    tally.guesses += 1
    if attempt.connack is not None:
        code = attempt.connack.reason
        tally.refused[code] = tally.refused.get(code, 0) + 1
        if code == 0:
            tally.guessed = password
    elif attempt.stage == "silent":
        tally.held += 1
    else:
        tally.shut_out += 1
    if attempt.session is not None:
        if attempt.accepted:
            await attempt.session.send(encode_disconnect(0), 1.0)
        attempt.session.abort()


async def _wave(
    ctx: AttackContext, source: str | None, passwords: Sequence[str], tally: _Tally
) -> None:
    await asyncio.gather(*(_guess(ctx, source, password, tally) for password in passwords))


async def brute_force(ctx: AttackContext) -> AttackResult:
    """Guess ``admin``'s password from one address, in waves as fast as the broker answers;
    after each wave one guess from a fresh address tells whether the username is banned.
    Blocked when a ban is observed (CONNACK 0x8A, or the source refused at connect) and no
    guess worked. The demo's clients, on other addresses and usernames, are not touched."""
    name = "password brute force"
    if not ctx.sources.available:
        return AttackResult(
            name,
            BAN,
            False,
            "not run: no spare loopback address to attack from, and guessing from the demo's "
            "own address would get its clients banned",
        )
    settings = ctx.settings
    ban_after = settings.limits.auth_failures_before_ban if settings else DEFAULT_BAN_AFTER
    wave_size = max(1, min(ban_after, 12))
    attacker = ctx.sources.next()
    tally = _Tally()
    username_banned = False
    for wave in range(MAX_WAVES):
        start = wave * (wave_size + 1)
        await _wave(ctx, attacker, [_password(start + n) for n in range(wave_size)], tally)
        if tally.guessed is not None:
            break
        check = _Tally()
        await _guess(ctx, ctx.sources.next(), _password(start + wave_size), check)
        tally.guesses += check.guesses
        if check.refused.get(BANNED):
            username_banned = True
            break
        if check.guessed is not None:
            tally.guessed = check.guessed
            break
    after = _Tally()
    if username_banned or tally.banned:
        await _guess(ctx, attacker, "one-more-try", after)  # is the source itself shut out?
    return _brute_force_result(name, attacker, tally, username_banned, after.shut_out > 0)


def _brute_force_result(
    name: str, attacker: str | None, tally: _Tally, username_banned: bool, ip_banned: bool
) -> AttackResult:
    user = BRUTE_FORCE_USER
    if tally.guessed is not None:
        return AttackResult(
            name, BAN, False, f"password of {user!r} guessed ({tally.guessed!r}) after "
            f"{tally.guesses} tries: {tally.summary()}"
        )  # fmt: skip
    detail = f"{tally.guesses} wrong passwords for {user!r} from {attacker}: {tally.summary()}"
    bans = []
    if username_banned:
        bans.append(f"{user!r} is banned (CONNACK {reason_text(BANNED)} from a fresh address)")
    if ip_banned:
        bans.append(f"{attacker} is refused at connect")
    if bans:
        return AttackResult(name, BAN, True, f"{detail}; then {' and '.join(bans)}")
    if tally.banned:
        return AttackResult(name, BAN, True, f"{detail}; banned")
    return AttackResult(name, BAN, False, f"{detail}; no ban after {tally.guesses} tries")


# ----------------------------------------------------------------- TLS versions


async def _tls_minimum(ctx: AttackContext) -> str:
    """The control's name, from what the broker accepts: "TLS 1.3 minimum" when it completes
    a TLS 1.3 handshake but refuses TLS 1.2, else "TLS 1.2 minimum" (the least it must do)."""
    if ctx.tls_minimum is None:
        tls12 = await accepts_tls(ctx.dial(tls=False), ssl.TLSVersion.TLSv1_2, HANDSHAKE_WAIT)
        tls13 = await accepts_tls(ctx.dial(tls=False), ssl.TLSVersion.TLSv1_3, HANDSHAKE_WAIT)
        ctx.tls_minimum = "1.3" if tls13 and not tls12 else "1.2"
    return f"TLS {ctx.tls_minimum} minimum"


async def _legacy_tls(ctx: AttackContext, version: int, label: str) -> AttackResult:
    name = f"{label} handshake"
    control = await _tls_minimum(ctx)
    try:
        answer = await legacy_handshake(ctx.dial(tls=False), version, HANDSHAKE_WAIT)
    except TimeoutError:
        return AttackResult(
            name, control, True, f"no answer to a {label} ClientHello in {HANDSHAKE_WAIT:g} s"
        )
    except OSError as exc:
        return AttackResult(name, control, False, f"could not reach the TLS port: {exc}")
    if answer.version is not None:
        return AttackResult(
            name, control, False, f"the broker answered {answer.describe()}: obsolete TLS accepted"
        )
    return AttackResult(name, control, True, f"handshake refused: {answer.describe()}")


async def tls_1_0_handshake(ctx: AttackContext) -> AttackResult:
    """A ClientHello offering only TLS 1.0. Blocked when no ServerHello comes back."""
    return await _legacy_tls(ctx, TLS_1_0, "TLS 1.0")


async def tls_1_1_handshake(ctx: AttackContext) -> AttackResult:
    """A ClientHello offering only TLS 1.1. Blocked when no ServerHello comes back."""
    return await _legacy_tls(ctx, TLS_1_1, "TLS 1.1")


# ----------------------------------------------------------------- plain MQTT


async def plain_mqtt_on_tls_port(ctx: AttackContext) -> AttackResult:
    """A plaintext CONNECT sent to the TLS port. Blocked when no CONNACK comes back."""
    name = "plain MQTT on the TLS port"
    try:
        session = await RawSession.open(ctx.dial(tls=False), CONNECT_WAIT)
    except (OSError, TimeoutError) as exc:
        return AttackResult(name, TLS_REQUIRED, False, f"could not reach the TLS port: {exc}")
    try:
        await session.send(encode_connect(ctx.client_id("plain", "x")), CONNECT_WAIT)
        try:
            data = await session.read_bytes(HANDSHAKE_WAIT)
        except TimeoutError:
            return AttackResult(
                name, TLS_REQUIRED, True, f"no answer in {HANDSHAKE_WAIT:g} s, no CONNACK"
            )
    finally:
        session.abort()
    if data[:1] == b"\x20" and len(data) >= 4:
        return AttackResult(
            name, TLS_REQUIRED, False, f"plaintext CONNACK {reason_text(data[3])}: no TLS needed"
        )
    if data[:1] == b"\x15":
        return AttackResult(name, TLS_REQUIRED, True, "answered with a TLS alert and closed")
    if not data:
        return AttackResult(name, TLS_REQUIRED, True, "connection closed, no CONNACK")
    return AttackResult(name, TLS_REQUIRED, True, f"{len(data)} bytes of non-MQTT answer")
