"""The MQTT 5 enhanced authentication exchange before CONNACK (§4.12), over any packet channel.

``tcp.py`` supplies an ``AuthChannel`` (its connection's send and next received packet) and a
method from ``security.enhanced_auth``; this module runs the AUTH round trips, bounded in steps
and time, and returns the final step. The transport turns it into the CONNACK.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from bastion.mqtt.packets import Auth, Connect, Disconnect, Packet, Properties
from bastion.mqtt.reason_codes import ReasonCode
from bastion.security.enhanced_auth import AuthMethod, AuthStep, Continue, Failure, Success

log = structlog.get_logger("bastion.transport")

MAX_AUTH_STEPS = 8
"""AUTH round trips allowed before CONNACK (SCRAM needs one)."""


class AuthChannel(Protocol):
    """The connection, as the exchange sees it."""

    def send(self, packet: Packet) -> bool:
        """Queue a packet; False if it exceeds the client's Maximum Packet Size."""
        ...

    async def receive(self, timeout: float) -> Packet | None:
        """The client's next packet; None if the connection closed or ``timeout`` ran out."""
        ...


ClaimCheck = Callable[[str], Failure | None]
"""Asked once the method knows who the client claims to be: a Failure refuses (a ban)."""


@dataclass(frozen=True, slots=True)
class ExchangeOutcome:
    """How an exchange ended: ``step`` None means the client left or timed out (no CONNACK)."""

    step: Success | Failure | None
    claimed_username: str | None = None
    detail: str = ""


async def run_exchange(
    method: AuthMethod,
    connect: Connect,
    channel: AuthChannel,
    *,
    timeout: float,
    clock: Callable[[], float],
    check_claim: ClaimCheck | None = None,
    max_steps: int = MAX_AUTH_STEPS,
) -> ExchangeOutcome:
    """Run ``method`` from CONNECT's Authentication Data until it succeeds or fails.

    Each Continue step goes out as AUTH 0x18 with the method's name and data; the client must
    answer with AUTH 0x18 and the same method. A different method is a 0x8C failure, any other
    AUTH reason code or any other packet a 0x82 one (a client doing enhanced authentication
    may send only AUTH or DISCONNECT before CONNACK, [MQTT-3.1.2-30]).
    """
    deadline = clock() + timeout
    claimed: str | None = None
    step = _guarded(method.start, connect.client_id, connect.properties.authentication_data)
    for _ in range(max_steps):
        if not isinstance(step, Continue):
            if isinstance(step, Failure):
                claimed = step.claimed_username or claimed
            return ExchangeOutcome(step, claimed)
        if step.claimed_username is not None and claimed is None:
            claimed = step.claimed_username
            refusal = check_claim(claimed) if check_claim is not None else None
            if refusal is not None:
                return ExchangeOutcome(refusal, claimed)
        challenge = Auth(
            ReasonCode.CONTINUE_AUTHENTICATION,
            Properties(authentication_method=method.name, authentication_data=step.data),
        )
        if not channel.send(challenge):
            return ExchangeOutcome(
                Failure(ReasonCode.UNSPECIFIED_ERROR, "AUTH exceeds the client's packet size"),
                claimed,
            )
        reply = await channel.receive(max(0.0, deadline - clock()))
        if reply is None:
            return ExchangeOutcome(None, claimed, "no answer to AUTH in time, or connection lost")
        if isinstance(reply, Disconnect):
            return ExchangeOutcome(None, claimed, "client disconnected during authentication")
        refusal = _check_reply(reply, method.name)
        if refusal is not None:
            return ExchangeOutcome(refusal, claimed)
        assert isinstance(reply, Auth)
        step = _guarded(step.next, reply.properties.authentication_data or b"")
    return ExchangeOutcome(
        Failure(ReasonCode.NOT_AUTHORIZED, f"more than {max_steps} authentication steps"), claimed
    )


def _check_reply(reply: Packet, name: str) -> Failure | None:
    if not isinstance(reply, Auth):
        return Failure(
            ReasonCode.PROTOCOL_ERROR,
            f"{type(reply).__name__} before CONNACK during enhanced authentication",
        )
    if reply.reason_code != ReasonCode.CONTINUE_AUTHENTICATION:
        return Failure(
            ReasonCode.PROTOCOL_ERROR,
            f"AUTH with reason 0x{reply.reason_code:02X} during the exchange (expected 0x18)",
        )
    if reply.properties.authentication_method != name:
        return Failure(
            ReasonCode.BAD_AUTHENTICATION_METHOD, "the authentication method changed mid-exchange"
        )
    return None


def _guarded(step: Callable[..., AuthStep], *args: object) -> AuthStep:
    """Run one step of a method; a plugin that raises fails the exchange, not the loop."""
    try:
        return step(*args)
    except Exception:
        log.exception("auth.method_failed")
        return Failure(ReasonCode.UNSPECIFIED_ERROR, "the authentication method failed")


__all__ = ["MAX_AUTH_STEPS", "AuthChannel", "ExchangeOutcome", "run_exchange"]
