"""Attacks by clients that hold a valid credential (a compromised device, a curious service):
an invalid UTF-8 topic, a sensor subscribing to ``#``, a sensor publishing on another sensor's
topic, a sensor taking over another's client id, and an oversized packet.

Whether something got through is decided by the observer (the ``viewer``), never assumed. The
flood and the QoS 2 redelivery trap are in ``attacks_abuse.py``; ``attacks.py`` runs them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Final, Literal

from bastion.demo.access import SENSORS
from bastion.demo.attacks_base import (
    ACL,
    CLIENT_ID_BINDING,
    CONNECT_WAIT,
    DEVICE_WILL_DELAY,
    MARKER_KEY,
    MAX_PACKET_SIZE,
    UTF8_VALIDATION,
    AttackContext,
    AttackResult,
    RawConnect,
)
from bastion.demo.attacks_paho import ConnectOutcome, PahoProbe
from bastion.demo.attacks_wire import (
    DISCONNECT,
    PUBACK,
    Packet,
    RawSession,
    decode_reason,
    encode_disconnect,
    encode_publish,
    publish_head,
    reason_text,
)
from bastion.services.readings import OFFLINE, status_topic

__all__ = [
    "client_id_takeover",
    "cross_topic_publish",
    "invalid_utf8_topic",
    "oversized_packet",
    "payload_for_size",
    "subscribe_everything",
]

ATTACKER: Final = SENSORS[1].name  # sensor2: the "compromised" device
VICTIM: Final = SENSORS[0]  # sensor1: the device it goes after
UTF8_USER: Final = "alerts"  # may write alerts/#: only the bad bytes can stop it
UTF8_TOPIC: Final = b"alerts/attack/\xc3\x28"  # 0xC3 0x28: a broken two-byte sequence
ANSWER_WAIT: Final = 3.0
READING_WAIT: Final = 8.0  # the longest we wait for the victim's next reading
MAX_OVERSIZE: Final = 16 << 20  # we do not send more than this to prove a point
FIRST_CHUNK: Final = 1024
NOT_AUTHORIZED: Final = 0x87


@dataclass(frozen=True, slots=True)
class _Answer:
    """What the broker did after our packet: a DISCONNECT or PUBACK (with its reason code),
    a closed connection, or nothing at all."""

    kind: Literal["DISCONNECT", "PUBACK", "closed", "nothing"]
    code: int = 0
    how: str = ""  # how the connection ended, for "closed"

    @property
    def refused(self) -> bool:
        """The broker cut the connection or answered with a failure code."""
        return self.kind in ("DISCONNECT", "closed") or (
            self.kind == "PUBACK" and self.code >= 0x80
        )

    def __str__(self) -> str:
        if self.kind == "closed":
            return f"connection closed ({self.how})"
        if self.kind == "nothing":
            return "no answer"
        return f"{self.kind} {reason_text(self.code)}"


def _answer_of(packet: Packet | None, session: RawSession) -> _Answer:
    if packet is None:
        return _Answer("closed", how=session.closed or "")
    kind: Literal["DISCONNECT", "PUBACK"] = "DISCONNECT" if packet.kind == DISCONNECT else "PUBACK"
    return _Answer(kind, decode_reason(packet))


async def _answer(session: RawSession, timeout: float = ANSWER_WAIT) -> _Answer:
    """Wait for the broker's reaction to what we just sent."""
    try:
        packet = await session.expect((PUBACK, DISCONNECT), timeout)
    except TimeoutError:
        return _Answer("nothing")
    return _answer_of(packet, session)


def _delivered(count: int | None) -> str:
    return "" if count is None else f"; the viewer got it {count} times" if count else ""


# ----------------------------------------------------------------- invalid UTF-8


async def invalid_utf8_topic(ctx: AttackContext) -> AttackResult:
    """A QoS 1 PUBLISH whose topic is not UTF-8, from a client allowed to write ``alerts/#``.
    Blocked when the broker refuses it and the viewer never receives it."""
    name = "invalid UTF-8 topic"
    watch = ctx.watch(ctx.ours(name))
    attempt = await ctx.raw_connect(UTF8_USER, ctx.client_id(UTF8_USER, "utf8"))
    if not attempt.accepted or attempt.session is None:
        await ctx.settle(watch, 0)
        if attempt.session is not None:
            attempt.session.abort()
        return AttackResult(name, UTF8_VALIDATION, False, f"could not log in: {_login(attempt)}")
    session = attempt.session
    try:
        await session.send(encode_publish(UTF8_TOPIC, ctx.marker(name), qos=1, packet_id=1))
        answer = await _answer(session)
    finally:
        session.abort()
    count = await ctx.settle(watch)
    shown = UTF8_TOPIC.decode("ascii", "backslashreplace")
    detail = f"PUBLISH to {shown}: {answer}{_delivered(count)}"
    if count:
        return AttackResult(name, UTF8_VALIDATION, False, detail)
    if answer.kind == "PUBACK" and answer.code == NOT_AUTHORIZED:
        return AttackResult(name, ACL, True, f"{detail} (the ACL refused it, not UTF-8 checks)")
    if count is None:
        detail += f"; {ctx.unobserved()}"
    return AttackResult(name, UTF8_VALIDATION, answer.refused, detail)


def _login(attempt: RawConnect) -> str:
    if attempt.connack is not None:
        return f"CONNACK {reason_text(attempt.connack.reason)}"
    return attempt.detail


# ----------------------------------------------------------------- authorisation


async def _device_probe(
    ctx: AttackContext, user: str, client_id: str
) -> tuple[PahoProbe, ConnectOutcome]:
    """A paho client logging in as device ``user`` (with the will it must have)."""
    will = ctx.device_will(user)
    expiry = DEVICE_WILL_DELAY if will is not None else 0
    probe = ctx.probe(ctx.dial(), client_id, user, will=will, session_expiry=expiry)
    return probe, await asyncio.to_thread(probe.connect, CONNECT_WAIT)


def _said(outcome: ConnectOutcome) -> str:
    """The CONNACK, or why there was none."""
    code = outcome.reason
    return outcome.detail if code is None else f"CONNACK {reason_text(code)}"


async def _finish_device(ctx: AttackContext, probe: PahoProbe, user: str) -> None:
    """Leave normally (will discarded, session ended); if the broker cut us, defuse the will."""
    gone = probe.gone
    await asyncio.to_thread(probe.disconnect)
    if gone:
        await ctx.defuse_will(user, probe.client_id, ctx.device_will(user))


async def subscribe_everything(ctx: AttackContext) -> AttackResult:
    """A sensor subscribes to ``#``. Blocked when the SUBACK refuses it and nothing arrives."""
    name = "sensor subscribes to #"
    user = VICTIM.name
    probe, login = await _device_probe(ctx, user, ctx.client_id(user, "sub"))
    try:
        if not login.accepted:
            return AttackResult(name, ACL, False, f"could not log in as {user}: {_said(login)}")
        codes = await asyncio.to_thread(probe.subscribe, "#", 0, ANSWER_WAIT)
        await asyncio.sleep(0.5)
        received = probe.received
    finally:
        await _finish_device(ctx, probe, user)
    if not codes:
        return AttackResult(name, ACL, False, f"no SUBACK within {ANSWER_WAIT:g} s")
    detail = f"{user} SUBSCRIBE #: SUBACK {reason_text(codes[0])}"
    if received:
        return AttackResult(name, ACL, False, f"{detail}; {received} messages arrived")
    if codes[0] < 0x80:
        return AttackResult(name, ACL, False, f"{detail}: {user} may read every topic")
    return AttackResult(name, ACL, True, detail)


async def cross_topic_publish(ctx: AttackContext) -> AttackResult:
    """sensor2 publishes (QoS 1) on sensor1's topic. Blocked when the viewer never receives
    it (MQTT 5 also answers PUBACK 0x87)."""
    name = "sensor publishes on another sensor's topic"
    watch = ctx.watch(ctx.ours(name))
    probe, login = await _device_probe(ctx, ATTACKER, ctx.client_id(ATTACKER, "pub"))
    try:
        if not login.accepted:
            await ctx.settle(watch, 0)
            problem = f"could not log in as {ATTACKER}: {_said(login)}"
            return AttackResult(name, ACL, False, problem)
        code = await asyncio.to_thread(
            probe.publish, VICTIM.topic, ctx.marker(name), 1, ANSWER_WAIT
        )
    finally:
        await _finish_device(ctx, probe, ATTACKER)
    count = await ctx.settle(watch)
    answer = "no PUBACK" if code is None else f"PUBACK {reason_text(code)}"
    detail = f"{ATTACKER} PUBLISH to {VICTIM.topic}: {answer}{_delivered(count)}"
    if count is None:  # only the broker's word for it
        refused = code is not None and code >= 0x80
        return AttackResult(name, ACL, refused, f"{detail}; {ctx.unobserved()}")
    return AttackResult(name, ACL, count == 0, detail)


async def client_id_takeover(ctx: AttackContext) -> AttackResult:
    """sensor2's credential with sensor1's client id (which would push the real sensor1 off).
    Blocked when it is refused and sensor1 stays online (no "offline" on its status topic);
    the detail says whether sensor1's readings kept arriving."""
    name = "client id takeover"
    victim = VICTIM.name
    offline = ctx.watch(lambda topic, payload: topic == status_topic(victim) and payload == OFFLINE)
    probe, login = await _device_probe(ctx, ATTACKER, victim)
    readings = ctx.watch(
        lambda topic, payload: topic == VICTIM.topic and MARKER_KEY.encode() not in payload
    )
    took_over = login.accepted
    if took_over:
        await asyncio.to_thread(probe.disconnect)
    else:
        await asyncio.to_thread(probe.close)
    started = time.monotonic()
    while ctx.seen(readings) == 0 and time.monotonic() - started < READING_WAIT:
        await asyncio.sleep(0.1)
    kept = await ctx.settle(readings, 0)
    dropped = await ctx.settle(offline, 0.2)
    attempt = f"{ATTACKER}'s password with client id {victim!r}: "
    attempt += _said(login) + (f", connected as {victim}" if took_over else "")
    if dropped:
        attempt += f"; the real {victim} was pushed off (status offline)"
    elif kept is not None:
        attempt += f"; the real {victim} stayed online"
    if kept is None:
        return AttackResult(name, CLIENT_ID_BINDING, False, f"{attempt}; {ctx.unobserved()}")
    waited = time.monotonic() - started
    attempt += (
        f", its readings kept arriving ({kept} in {waited:.1f} s)"
        if kept
        else f", but no reading from it in {waited:.1f} s (is it running?)"
    )
    refused = login.reason is not None and not took_over  # the broker said no
    blocked = refused and not dropped
    return AttackResult(name, CLIENT_ID_BINDING, blocked, attempt)


# ----------------------------------------------------------------- oversized packet


def payload_for_size(topic: bytes, packet_size: int) -> int:
    """The payload that makes a QoS 1 PUBLISH on ``topic`` exactly ``packet_size`` bytes."""
    size = packet_size - len(publish_head(topic, 0, qos=1, packet_id=1))
    while size > 0 and len(publish_head(topic, size, qos=1, packet_id=1)) + size > packet_size:
        size -= 1
    return size


async def _stream(session: RawSession, head: bytes, payload: bytes) -> tuple[_Answer, str]:
    """Send the header and the first bytes; if the broker says nothing, the rest. The answer,
    and when it came ("after the header" or "")."""
    if not await session.send(head + payload[:FIRST_CHUNK]):
        return _Answer("closed", how=session.closed or ""), "after the header"
    with contextlib.suppress(TimeoutError):
        packet = await session.expect((PUBACK, DISCONNECT), 1.0)
        return _answer_of(packet, session), "after the header"
    for start in range(FIRST_CHUNK, len(payload), 65536):
        if not await session.send(payload[start : start + 65536]):
            return _Answer("closed", how=session.closed or ""), ""
    return await _answer(session), ""


async def oversized_packet(ctx: AttackContext) -> AttackResult:
    """A PUBLISH one byte over the broker's Maximum Packet Size, on the sender's own topic.
    Blocked when the broker cuts the connection (MQTT 5: DISCONNECT 0x95) and the viewer
    never receives it."""
    name = "oversized packet"
    user = VICTIM.name
    client_id = ctx.client_id(user, "big")
    will = ctx.device_will(user)
    watch = ctx.watch(ctx.ours(name))
    attempt = await ctx.raw_connect(
        user, client_id, will=will, session_expiry=DEVICE_WILL_DELAY if will else 0
    )
    if not attempt.accepted or attempt.session is None or attempt.connack is None:
        await ctx.settle(watch, 0)
        if attempt.session is not None:
            attempt.session.abort()
        return AttackResult(name, MAX_PACKET_SIZE, False, f"could not log in: {_login(attempt)}")
    session = attempt.session
    announced = attempt.connack.max_packet_size
    configured = ctx.settings.mqtt.max_packet_size if ctx.settings else None
    limit = announced or configured or 1 << 20
    if limit + 1 > MAX_OVERSIZE:
        await session.send(encode_disconnect(0), 1.0)
        session.abort()
        await ctx.settle(watch, 0)
        return AttackResult(
            name, MAX_PACKET_SIZE, False, f"the broker takes packets of {limit} bytes: not tried"
        )
    topic = VICTIM.topic.encode()
    marker = ctx.marker(name)
    size = payload_for_size(topic, limit + 1)
    payload = marker + b"x" * max(0, size - len(marker))
    try:
        head = publish_head(topic, len(payload), qos=1, packet_id=1)
        answer, when = await _stream(session, head, payload)
    finally:
        session.abort()
    await ctx.defuse_will(user, client_id, will)
    count = await ctx.settle(watch)
    source = "announced" if announced else "configured" if configured else "assumed"
    detail = f"{limit + 1}-byte PUBLISH (maximum {limit}, {source}): {answer}"
    detail += f" {when}{_delivered(count)}" if when else _delivered(count)
    if count:
        return AttackResult(name, MAX_PACKET_SIZE, False, detail)
    if count is None:
        detail += f"; {ctx.unobserved()}"
    return AttackResult(name, MAX_PACKET_SIZE, answer.refused, detail)
