"""The scripted attacker of ``bastion demo --attack``: eleven kinds of attack, one after the
other, against the running demo broker while the sensors keep publishing.

Each attack reports whether the control meant to stop it did so, judged from what was observed
(reason codes, closed connections, what reached a ``viewer`` that watches ``#``), never assumed.
The attacks live in ``attacks_entry.py``, ``attacks_inside.py`` and ``attacks_abuse.py``;
``run.py`` (the demo) calls ``run_attacks`` and shows each result as it comes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import structlog

from bastion.demo.access import VIEWER
from bastion.demo.attacks_abuse import message_flood, redelivery_trap
from bastion.demo.attacks_base import (
    ACL,
    AUTHENTICATION,
    BAN,
    BOUNDED_REDELIVERY,
    CLIENT_ID_BINDING,
    CONNECT_WAIT,
    MARKER_KEY,
    MAX_PACKET_SIZE,
    RATE_LIMIT,
    TLS_REQUIRED,
    UTF8_VALIDATION,
    AttackContext,
    AttackResult,
    AttackTarget,
    MissingCredentialError,
    SourceAddresses,
    load_broker_settings,
)
from bastion.demo.attacks_entry import (
    anonymous_connect,
    brute_force,
    plain_mqtt_on_tls_port,
    tls_1_0_handshake,
    tls_1_1_handshake,
)
from bastion.demo.attacks_inside import (
    client_id_takeover,
    cross_topic_publish,
    invalid_utf8_topic,
    oversized_packet,
    subscribe_everything,
)
from bastion.demo.attacks_paho import Observer

__all__ = [
    "ATTACKS",
    "ATTACK_NAMES",
    "MARKER_KEY",
    "Attack",
    "AttackResult",
    "AttackTarget",
    "run_attacks",
]

log = structlog.get_logger("bastion.demo.attacks")

TLS_MINIMUM: Final = "TLS 1.3 minimum"  # the control as the demo configures it
RUN_BUDGET: Final = 90.0  # the whole list, at worst (about 12 s on a quiet machine)


@dataclass(frozen=True, slots=True)
class Attack:
    """One entry of the list: its name, the control meant to stop it, the coroutine, and the
    longest it may take (it is cut off and reported unblocked after that)."""

    name: str
    control: str
    run: Callable[[AttackContext], Awaitable[AttackResult]]
    budget: float


ATTACKS: Final[tuple[Attack, ...]] = (
    Attack("anonymous connect", AUTHENTICATION, anonymous_connect, 15.0),
    Attack("password brute force", BAN, brute_force, 20.0),
    Attack("TLS 1.0 handshake", TLS_MINIMUM, tls_1_0_handshake, 10.0),
    Attack("TLS 1.1 handshake", TLS_MINIMUM, tls_1_1_handshake, 10.0),
    Attack("plain MQTT on the TLS port", TLS_REQUIRED, plain_mqtt_on_tls_port, 10.0),
    Attack("invalid UTF-8 topic", UTF8_VALIDATION, invalid_utf8_topic, 12.0),
    Attack("sensor subscribes to #", ACL, subscribe_everything, 15.0),
    Attack("sensor publishes on another sensor's topic", ACL, cross_topic_publish, 15.0),
    Attack("client id takeover", CLIENT_ID_BINDING, client_id_takeover, 20.0),
    Attack("oversized packet", MAX_PACKET_SIZE, oversized_packet, 15.0),
    Attack("message flood", RATE_LIMIT, message_flood, 15.0),
    Attack("QoS 2 redelivery trap", BOUNDED_REDELIVERY, redelivery_trap, 30.0),
)
ATTACK_NAMES: Final = tuple(attack.name for attack in ATTACKS)


def _client_context(target: AttackTarget) -> ssl.SSLContext:
    """A normal client's TLS: trusts the demo CA, checks the host name, TLS 1.2 or newer."""
    context = ssl.create_default_context(cafile=str(target.cafile))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _start_observer(ctx: AttackContext) -> None:
    password = ctx.target.credentials.get(VIEWER)
    if password is None:
        ctx.observer_problem = f"the target has no password for {VIEWER!r}"
        return
    observer = Observer(ctx.dial(), VIEWER, password, ctx.client_id(VIEWER, "watch"))
    problem = await asyncio.to_thread(observer.start, CONNECT_WAIT)
    if problem is None:
        ctx.observer = observer
    else:
        ctx.observer_problem = f"the viewer could not watch: {problem}"


async def _run_one(ctx: AttackContext, attack: Attack, budget: float) -> AttackResult:
    """One attack, bounded in time; whatever goes wrong becomes an unblocked result."""
    if budget <= 0:
        detail = f"not run: the whole list may take {RUN_BUDGET:g} s and that time is up"
        return AttackResult(attack.name, attack.control, False, detail)
    try:
        result = await asyncio.wait_for(attack.run(ctx), budget)
    except TimeoutError:
        detail = f"did not finish within {budget:.1f} s"
        return AttackResult(attack.name, attack.control, False, detail)
    except MissingCredentialError as exc:
        return AttackResult(attack.name, attack.control, False, f"not run: {exc}")
    except Exception as exc:  # an attack must never take the demo down
        log.warning("attack.failed", attack=attack.name, exc_info=True)
        detail = f"the attack itself failed: {type(exc).__name__}: {exc}"
        return AttackResult(attack.name, attack.control, False, detail)
    return dataclasses.replace(result, name=attack.name)


def _report(report: Callable[[AttackResult], None], result: AttackResult) -> None:
    try:
        report(result)
    except Exception:  # the display's problem must not stop the attacks
        log.warning("attack.report_failed", attack=result.name, exc_info=True)


async def run_attacks(
    target: AttackTarget, report: Callable[[AttackResult], None]
) -> list[AttackResult]:
    """Run every attack of ``ATTACKS`` against ``target``, in order; ``report`` is called with
    each result as soon as it is known. Returns all the results.

    Connections come from loopback addresses of their own (127.a.b.N) when the broker is on
    this machine, so the back-off and bans the attacks provoke never reach the demo's clients.
    """
    try:
        tls = _client_context(target)
    except (OSError, ssl.SSLError) as exc:
        unrun = [
            AttackResult(a.name, a.control, False, f"not run: cannot use {target.cafile}: {exc}")
            for a in ATTACKS
        ]
        for result in unrun:
            _report(report, result)
        return unrun
    sources = await asyncio.to_thread(SourceAddresses, target.host)
    settings = await asyncio.to_thread(load_broker_settings, target.state_dir)
    ctx = AttackContext(target, tls, sources, settings)
    results: list[AttackResult] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RUN_BUDGET
    try:
        await _start_observer(ctx)
        for attack in ATTACKS:
            budget = min(attack.budget, deadline - loop.time())
            result = await _run_one(ctx, attack, budget)
            results.append(result)
            _report(report, result)
    finally:
        await asyncio.to_thread(ctx.close_all)
        if ctx.observer is not None:
            await asyncio.to_thread(ctx.observer.stop)
    return results
