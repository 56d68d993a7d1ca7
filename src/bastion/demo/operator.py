"""The operator's one action in the demo: unlock the door with a QoS 2 command.

Connects with the ``operator`` credential (the only one the ACL lets write ``cmd/door1``),
publishes ``{"command": "unlock", ...}`` at QoS 2, waits for PUBCOMP and disconnects. The
door lock's answer on ``result/door1`` is seen by the monitor.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Final

from bastion.errors import BastionError
from bastion.services.doorlock import COMMAND_QOS, command_topic
from bastion.services.netclient import Endpoint, ServiceClient

__all__ = ["CommandSent", "send_unlock"]

TIMEOUT: Final = 10.0


@dataclass(frozen=True, slots=True)
class CommandSent:
    """What happened to the command: its id, and whether the broker completed QoS 2."""

    request_id: str
    completed: bool
    error: str = ""


def send_unlock(endpoint: Endpoint, device: str, user: str) -> CommandSent:
    """Publish one ``unlock`` for ``device`` as ``user`` at QoS 2 (blocking, bounded)."""
    request_id = f"demo-{secrets.token_hex(4)}"
    payload = json.dumps(
        {"command": "unlock", "request_id": request_id, "user": user}, separators=(",", ":")
    ).encode()
    try:
        client = ServiceClient(endpoint)
    except BastionError as exc:
        return CommandSent(request_id, False, str(exc))
    try:
        client.connect(TIMEOUT)
        delivery = client.publish(command_topic(device), payload, qos=COMMAND_QOS)
        completed = delivery.wait(TIMEOUT)
    except BastionError as exc:
        return CommandSent(request_id, False, str(exc))
    finally:
        client.stop()
    return CommandSent(request_id, completed, "" if completed else "no PUBCOMP in time")
