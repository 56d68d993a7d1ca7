"""``bastion doorlock`` against a real TLS broker: only a QoS 2 ``unlock`` from an authorised
user opens the door; every decision is reported on ``result/door1`` at QoS 2."""

from __future__ import annotations

import json

from .conftest import ConnectAs, StartService
from .reference import collect_until, drain


def command(request_id: str, user: str = "operator", verb: str = "unlock") -> bytes:
    return json.dumps({"command": verb, "request_id": request_id, "user": user}).encode()


def test_unlock_needs_qos2_and_an_authorised_user(
    connect_as: ConnectAs, start_service: StartService
) -> None:
    viewer = connect_as("viewer")
    viewer.subscribe("result/door1", 2)
    lock = start_service("doorlock", "door1", as_client="door1", extra=["--authorized", "operator"])
    lock.wait_event("client.subscribed")
    operator = connect_as("operator")

    assert operator.publish("cmd/door1", command("r-qos1"), 1) == 0
    [low] = collect_until(viewer, lambda ms: len(ms) == 1)
    assert operator.publish("cmd/door1", command("r-mallory", user="mallory"), 2) == 0
    [stranger] = collect_until(viewer, lambda ms: len(ms) == 1)
    assert operator.publish("cmd/door1", command("r-ok"), 2) == 0
    [accepted] = collect_until(viewer, lambda ms: len(ms) == 1)

    results = [json.loads(m.payload) for m in (low, stranger, accepted)]
    assert all(m.qos == 2 for m in (low, stranger, accepted))
    assert (results[0]["outcome"], results[0]["request_id"]) == ("refused", "r-qos1")
    assert results[0]["reason"].startswith("qos_too_low")
    assert results[0]["state"] == "locked"
    assert (results[1]["outcome"], results[1]["reason"]) == ("refused", "user_not_allowed")
    assert results[1]["state"] == "locked"
    assert (results[2]["outcome"], results[2]["state"]) == ("accepted", "unlocked")
    assert results[2]["command"] == "unlock"

    # The ACL is the first gate: a client without write access never reaches the lock.
    intruder = connect_as("intruder")
    # PUBREC says 0x87; paho goes on with PUBREL and reports the broker's PUBCOMP (0x92).
    assert intruder.publish("cmd/door1", command("r-intruder", user="operator"), 2) >= 0x80
    assert drain(viewer, 0.5) == []

    assert lock.stop() == 0
    decisions = lock.events("lock.command")
    assert [(e["request_id"], e["outcome"], e["executed"]) for e in decisions] == [
        ("r-qos1", "refused", False),
        ("r-mallory", "refused", False),
        ("r-ok", "accepted", True),
    ]
    assert decisions[2]["user"] == "operator"
    assert lock.events("client.disconnected")[-1]["reason"] == "normal"
