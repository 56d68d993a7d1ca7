"""Abuse by clients that hold a valid credential: a message flood (the rate limit must throttle
or disconnect it) and the QoS 2 redelivery trap (a subscriber that never acknowledges, to make
the broker resend for ever: it must give up after ``mqtt.max_delivery_attempts``).

What got through is counted by the observer (the ``viewer``). Run by ``attacks.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from bastion.demo.access import DOOR, OPERATOR, SENSORS, VIEWER
from bastion.demo.attacks_base import (
    BOUNDED_REDELIVERY,
    CONNECT_WAIT,
    DEVICE_WILL_DELAY,
    RATE_LIMIT,
    SETTLE,
    AttackContext,
    AttackResult,
)
from bastion.demo.attacks_wire import (
    DISCONNECT,
    PUBLISH,
    SUBACK,
    Packet,
    RawSession,
    decode_publish,
    decode_reason,
    decode_suback,
    encode_disconnect,
    encode_publish,
    encode_subscribe,
    reason_text,
)

__all__ = ["flood_verdict", "message_flood", "redelivery_trap", "trap_verdict"]

FLOODER: Final = SENSORS[0]  # sensor1, on its own topic: only the rate limit can stop it
FLOOD_SECONDS: Final = 2.0
FLOOD_MAX: Final = 5000
FLOOD_BATCH: Final = 20
FLOOD_PAUSE: Final = 0.005  # 20 messages per 5 ms: 4000/s, two hundred times a sensor's budget
CUT_WAIT: Final = 1.0  # after the flood, how long we wait to see the broker cut us
SLACK: Final = 1.25  # measured against a configured budget: refills and timing jitter

TRAP_TOPIC: Final = f"cmd/{DOOR}"  # the operator may send QoS 2 here, the viewer may read it
TRAP_EXPIRY: Final = 60
DEFAULT_RECONNECTS: Final = 6
FIRST_DELIVERY_WAIT: Final = 3.0
REDELIVERY_WAIT: Final = 1.5


# ----------------------------------------------------------------- message flood


async def _flood(
    ctx: AttackContext, session: RawSession, name: str, cut: asyncio.Task[Packet | None]
) -> tuple[int, float]:
    """Publish QoS 0 as fast as the connection takes it; (messages sent, seconds).

    Each batch goes out in one write with a breath after it, so the broker's DISCONNECT is
    read (not lost to a reset) and nothing is written into a connection already gone.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    topic = FLOODER.topic.encode()
    sent = 0
    while sent < FLOOD_MAX and not cut.done():
        remaining = FLOOD_SECONDS - (loop.time() - started)
        if remaining <= 0:
            break
        batch = b"".join(
            encode_publish(topic, ctx.marker(name, n=sent + n)) for n in range(FLOOD_BATCH)
        )
        if not session.write_nowait(batch):
            break
        sent += FLOOD_BATCH
        await asyncio.sleep(FLOOD_PAUSE)
        if cut.done() or session.closed is not None or not await session.drain(remaining):
            break
    return sent, loop.time() - started


async def message_flood(ctx: AttackContext) -> AttackResult:
    """sensor1's credential publishes as fast as it can for two seconds. Blocked when the
    broker disconnects it (0x96) or lets through no more than its configured budget."""
    name = "message flood"
    user = FLOODER.name
    client_id = ctx.client_id(user, "flood")
    will = ctx.device_will(user)
    watch = ctx.watch(ctx.ours(name))
    attempt = await ctx.raw_connect(
        user, client_id, will=will, session_expiry=DEVICE_WILL_DELAY if will else 0
    )
    session = attempt.session
    if not attempt.accepted or session is None:
        await ctx.settle(watch, 0)
        if session is not None:
            session.abort()
        login = f"CONNACK {reason_text(attempt.connack.reason)}" if attempt.connack else ""
        return AttackResult(name, RATE_LIMIT, False, f"could not log in: {login or attempt.detail}")
    cut = asyncio.create_task(session.expect((DISCONNECT,), FLOOD_SECONDS + CUT_WAIT))
    try:
        sent, elapsed = await _flood(ctx, session, name, cut)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(cut), CUT_WAIT)
        ending = await _ending(cut, session)
    finally:
        cut.cancel()
        session.abort()
    await ctx.defuse_will(user, client_id, will)
    count = await ctx.settle(watch, SETTLE)
    return flood_verdict(
        ctx, name, user=user, sent=sent, elapsed=elapsed, ending=ending, count=count
    )


async def _ending(cut: asyncio.Task[Packet | None], session: RawSession) -> str | None:
    """How the broker ended the flood: "DISCONNECT 0x96 ...", "connection closed", or None."""
    if not cut.done():
        cut.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await cut
        return None
    if cut.cancelled() or cut.exception() is not None:
        return None
    packet = cut.result()
    if packet is None:
        return f"connection closed ({session.closed})"
    return f"DISCONNECT {reason_text(decode_reason(packet))}"


def flood_verdict(
    ctx: AttackContext,
    name: str,
    *,
    user: str,
    sent: int,
    elapsed: float,
    ending: str | None,
    count: int | None,
) -> AttackResult:
    detail = f"{sent} messages in {elapsed:.1f} s as {user}"
    through = "" if count is None else f"; {count} of them reached the viewer"
    if ending is not None:
        return AttackResult(name, RATE_LIMIT, True, f"{detail}, then {ending}{through}")
    if count is None:
        return AttackResult(name, RATE_LIMIT, False, f"{detail}; {ctx.unobserved()}")
    settings = ctx.settings
    if settings is None:
        throttled = count < sent / 2
        return AttackResult(name, RATE_LIMIT, throttled, f"{detail}, not cut off{through}")
    profile = settings.limits.users.get(user, settings.limits.client)
    rate = profile.messages_per_second
    if rate is None:
        return AttackResult(name, RATE_LIMIT, False, f"{detail}{through}: no message budget")
    budget = (profile.burst_messages + rate * (elapsed + SETTLE + CUT_WAIT)) * SLACK
    shown = f"budget {rate:g}/s, burst {profile.burst_messages:g}"
    if budget >= sent:
        return AttackResult(
            name, RATE_LIMIT, False, f"{detail}, not cut off{through}: the {shown} allows it all"
        )
    within = count <= budget
    verdict = "throttled" if within else "not throttled"
    return AttackResult(name, RATE_LIMIT, within, f"{detail}, {verdict}{through} ({shown})")


# ----------------------------------------------------------------- QoS 2 redelivery trap


async def _marked_publish(session: RawSession, needle: bytes, timeout: float) -> bool:
    """Wait for our message (others on the topic are left unacknowledged too)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            packet = await session.expect((PUBLISH,), deadline - loop.time())
        except TimeoutError:
            return False
        if packet is None:
            return False
        if needle in decode_publish(packet).payload:
            return True


async def _subscribe_trap(session: RawSession) -> str | None:
    """SUBSCRIBE the trap at QoS 2; None when granted (QoS 1 or 2), else the problem."""
    if not await session.send(encode_subscribe(1, TRAP_TOPIC, 2)):
        return f"connection closed ({session.closed})"
    try:
        answer = await session.expect((SUBACK,), CONNECT_WAIT)
    except TimeoutError:
        return "no SUBACK"
    if answer is None:
        return f"connection closed ({session.closed})"
    codes = decode_suback(answer)
    if not codes or codes[0] not in (1, 2):
        return f"SUBACK {reason_text(codes[0]) if codes else 'empty'}"
    return None


async def _publish_bait(ctx: AttackContext, payload: bytes) -> str | None:
    """The operator sends one QoS 2 command (never "unlock"); None when it went through."""
    probe = ctx.probe(ctx.dial(), ctx.client_id(OPERATOR, "trap"), OPERATOR)
    try:
        outcome = await asyncio.to_thread(probe.connect, CONNECT_WAIT)
        if not outcome.accepted:
            code = outcome.reason
            return outcome.detail if code is None else f"CONNACK {reason_text(code)}"
        code = await asyncio.to_thread(probe.publish, TRAP_TOPIC, payload, 2, CONNECT_WAIT)
        if code is None or code >= 0x80:
            return "no PUBCOMP" if code is None else f"publish refused: {reason_text(code)}"
        return None
    finally:
        await asyncio.to_thread(probe.disconnect)


async def redelivery_trap(ctx: AttackContext) -> AttackResult:
    """A viewer session takes a QoS 2 message, never sends PUBREC, drops the connection and
    comes back, again and again. Blocked when the redeliveries stop (after
    ``mqtt.max_delivery_attempts``) while we are still reconnecting."""
    name = "QoS 2 redelivery trap"
    attempts = ctx.settings.mqtt.max_delivery_attempts if ctx.settings else 0
    reconnects = min(attempts + 3, 8) if attempts else DEFAULT_RECONNECTS
    client_id = ctx.client_id(VIEWER, "trap")
    dial = ctx.dial()
    attempt = await ctx.raw_connect(VIEWER, client_id, dial=dial, session_expiry=TRAP_EXPIRY)
    session = attempt.session
    if not attempt.accepted or session is None:
        if session is not None:
            session.abort()
        return AttackResult(name, BOUNDED_REDELIVERY, False, f"trap not set: {attempt.detail}")
    deliveries = 0
    try:
        problem = await _subscribe_trap(session)
        marker = ctx.marker(name, command="noop", request_id=f"attack-{ctx.run_id}", user=OPERATOR)
        problem = problem or await _publish_bait(ctx, marker)
        if problem is not None:
            return AttackResult(name, BOUNDED_REDELIVERY, False, f"trap not set: {problem}")
        for round_ in range(reconnects + 1):
            wait = FIRST_DELIVERY_WAIT if round_ == 0 else REDELIVERY_WAIT
            if not await _marked_publish(session, marker, wait):
                break
            deliveries += 1
            session.abort()  # no PUBREC, no DISCONNECT: as if it crashed on the message
            if round_ == reconnects:
                break
            again = await ctx.raw_connect(
                VIEWER, client_id, dial=dial, clean_start=False, session_expiry=TRAP_EXPIRY
            )
            if not again.accepted or again.session is None:
                return AttackResult(
                    name, BOUNDED_REDELIVERY, False, f"reconnect refused: {again.detail}"
                )
            session = again.session
    finally:
        session.abort()
        await _end_trap_session(ctx, client_id)
    return trap_verdict(name, deliveries, reconnects, attempts)


async def _end_trap_session(ctx: AttackContext, client_id: str) -> None:
    """Leave nothing behind: a clean session, ended at once."""
    attempt = await ctx.raw_connect(VIEWER, client_id, dial=ctx.dial())
    if attempt.session is not None:
        if attempt.accepted:
            await attempt.session.send(encode_disconnect(0), 1.0)
        await attempt.session.close()


def trap_verdict(name: str, deliveries: int, reconnects: int, configured: int) -> AttackResult:
    limit = f" (max_delivery_attempts = {configured})" if configured else ""
    if deliveries == 0:
        return AttackResult(
            name, BOUNDED_REDELIVERY, False, "the trap never received the QoS 2 message"
        )
    if deliveries > reconnects:
        return AttackResult(
            name,
            BOUNDED_REDELIVERY,
            False,
            f"delivered on every one of {reconnects} reconnects without PUBREC: no bound{limit}",
        )
    return AttackResult(
        name,
        BOUNDED_REDELIVERY,
        True,
        f"delivered {deliveries} times to a subscriber that never sent PUBREC (reconnecting "
        f"after each), then not again: the broker gave up{limit}",
    )
