"""The door lock as a network client: QoS 2 commands on ``cmd/<device>``, results on ``result/``.

Feeds each command (payload and delivery QoS) to ``doorlock.DoorLock`` and publishes its
decision at QoS 2 through ``netclient.ServiceClient``, with a retained status and a will like a
sensor; ``bastion doorlock`` (``cli/services.py``) and the demo run it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from bastion.services.doorlock import (
    COMMAND_QOS,
    RESULT_QOS,
    CommandError,
    DoorLock,
    LockDecision,
    command_topic,
    parse_command,
    result_topic,
)
from bastion.services.netclient import Backoff, Endpoint, Received, RunBounds, ServiceClient
from bastion.services.readings import online_status, will_message

__all__ = ["LockReport", "run_doorlock"]

_log = structlog.get_logger("bastion.services.doorlock")


@dataclass(frozen=True, slots=True)
class LockReport:
    """What one run of the lock did."""

    device: str
    commands: int
    executed: int
    refused: int
    state: str


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _user_of(payload: bytes) -> str | None:
    try:
        return parse_command(payload).user
    except CommandError:
        return None


def _log_decision(device: str, message: Received, decision: LockDecision, sent: bool) -> None:
    result = decision.result
    fields: dict[str, object] = {
        "device": device,
        "outcome": result.outcome.value,
        "executed": decision.execute,
        "state": result.state,
        "qos": message.qos,
        "sent": sent,
    }
    for name, value in (
        ("command", result.command),
        ("request_id", result.request_id),
        ("user", _user_of(message.payload)),
        ("reason", result.reason),
    ):
        if value is not None:
            fields[name] = value
    if decision.execute:
        _log.info("lock.command", **fields)
    else:
        _log.warning("lock.command", **fields)


def run_doorlock(
    endpoint: Endpoint,
    device: str,
    bounds: RunBounds,
    *,
    authorized: Iterable[str] = (),
    clock: Callable[[], datetime] = _utc_now,
    backoff: Backoff | None = None,
) -> LockReport:
    """Serve ``cmd/<device>`` until ``bounds`` ends; raises ConnectError when the client gives up.

    Commands are executed only when delivered at QoS 2 from a user in ``authorized`` (the
    broker's ACL on the command topic is the first gate); every decision is published on
    ``result/<device>`` at QoS 2. Retained commands are never executed: a stale ``unlock``
    must not open the door when the lock restarts.
    """
    lock = DoorLock(frozenset(authorized), device)
    will = will_message(device)
    client = ServiceClient(
        endpoint, will=will, birth=online_status(device), farewell=will, backoff=backoff
    )
    client.subscribe(command_topic(device), COMMAND_QOS)
    results = result_topic(device)
    commands = executed = refused = 0
    try:
        if not bounds.connect(client):
            return LockReport(device, 0, 0, 0, lock.state)
        if not authorized:
            _log.warning("lock.no_authorized_users", device=device)
        _log.info("lock.started", device=device, state=lock.state, topic=command_topic(device))
        for message in bounds.messages(client):
            if message.retain:
                _log.warning("lock.retained_command_ignored", device=device, topic=message.topic)
                continue
            commands += 1
            decision = lock.handle(message.payload, message.qos, clock())
            executed += decision.execute
            refused += decision.result.reason is not None
            delivery = client.publish(results, decision.result.to_json(), RESULT_QOS)
            _log_decision(device, message, decision, delivery.accepted)
    finally:
        client.stop()
    _log.info("lock.stopped", device=device, commands=commands, executed=executed, refused=refused)
    return LockReport(device, commands, executed, refused, lock.state)
