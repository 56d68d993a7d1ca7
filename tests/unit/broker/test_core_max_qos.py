"""Broker core, per-connection Maximum QoS: the lowest of the server's, listener's and user's.

MQTT 5 §3.2.2.3.4: announced in CONNACK, used to grant subscriptions (downgrade), enforced
on PUBLISH (DISCONNECT 0x9B; MQTT 3.1.1 clients are disconnected) and on the will (0x9B).
"""

from __future__ import annotations

import pytest
from brokerkit import Harness

from bastion.broker.admission import effective_max_qos
from bastion.mqtt.packets import Subscription, Will
from bastion.mqtt.reason_codes import ReasonCode
from bastion.security.policy import AuthResult, ClientIdentity, Policy


class NamedPolicy(Policy):
    """Anonymous-style access where every client keeps the username it sent."""

    def authenticate(
        self,
        client_id: str,
        username: str | None,
        password: bytes | None,
        peer: str,
        certificate_identity: str | None = None,
    ) -> AuthResult:
        return AuthResult(0, ClientIdentity(client_id, username, peer))


def _harness(users: dict[str, int] | None = None, **settings: object) -> Harness:
    return Harness(NamedPolicy(allow_anonymous=True, user_max_qos=users), **settings)


@pytest.mark.parametrize(
    ("server", "listener", "user", "expected"),
    [
        (2, None, None, 2),
        (1, None, None, 1),
        (2, 1, None, 1),
        (2, None, 0, 0),
        (1, 2, 2, 1),
        (2, 0, 1, 0),
        (2, 1, 0, 0),
    ],
)
def test_effective_max_qos_is_the_lowest_ceiling(
    server: int, listener: int | None, user: int | None, expected: int
) -> None:
    assert effective_max_qos(server, listener, user) == expected


def test_connack_announces_the_connection_ceiling() -> None:
    h = _harness({"meter": 0}, max_qos=2)
    assert h.connect("open").connack.properties.maximum_qos is None  # absent means 2
    listener = h.connect("edge", listener_max_qos=1)
    assert listener.connack.properties.maximum_qos == 1
    assert listener.live.max_qos == 1
    user = h.connect("m1", username="meter", listener_max_qos=1)
    assert user.connack.properties.maximum_qos == 0
    other = h.connect("o1", username="other", listener_max_qos=2)
    assert other.connack.properties.maximum_qos is None


def test_subscriptions_are_granted_at_most_the_ceiling() -> None:
    h = _harness({"meter": 0})
    subs = (Subscription("a", qos=0), Subscription("b", qos=1), Subscription("c", qos=2))
    edge = h.connect("edge", listener_max_qos=1)
    assert edge.subscribe(*subs).reason_codes == (0, 1, 1)
    v311 = h.connect("v311", version=4, listener_max_qos=1)
    assert v311.subscribe(*subs).reason_codes == (0, 1, 1)  # 3.1.1 sees the downgrade too
    meter = h.connect("meter-1", username="meter")
    assert meter.subscribe(*subs).reason_codes == (0, 0, 0)
    full = h.connect("full")
    assert full.subscribe(*subs).reason_codes == (0, 1, 2)
    h.connect("pub").publish("c", qos=2)
    assert [m.qos for m in edge.take_publishes()] == [1]
    assert [m.qos for m in meter.take_publishes()] == [0]
    assert [m.qos for m in full.take_publishes()] == [2]


def test_publish_above_the_ceiling_disconnects_unrouted() -> None:
    h = _harness({"meter": 1})
    watcher = h.connect("watcher")
    watcher.subscribe("t", qos=2)
    v5 = h.connect("v5", listener_max_qos=1)
    v5.publish("t", qos=2)
    assert v5.link.closes == [ReasonCode.QOS_NOT_SUPPORTED]
    v311 = h.connect("v311", version=4, username="meter")
    v311.publish("t", qos=2)
    assert v311.link.closes == [None]  # 3.1.1 cannot be told: closed, as Mosquitto does
    assert watcher.take() == []
    assert h.stats.protocol_violations == 2


def test_publish_at_the_ceiling_is_routed() -> None:
    h = _harness({"meter": 1})
    watcher = h.connect("watcher")
    watcher.subscribe("t", qos=2)
    meter = h.connect("m1", username="meter", listener_max_qos=2)
    meter.publish("t", qos=1)
    assert not meter.link.closed
    assert [m.qos for m in watcher.take_publishes()] == [1]


def test_will_above_the_ceiling_refuses_the_connect() -> None:
    h = _harness({"meter": 0})
    will = Will("status/m", b"offline", qos=1)
    listener = h.try_connect("a", will=will, listener_max_qos=0)
    assert listener.connack.reason_code == ReasonCode.QOS_NOT_SUPPORTED
    assert listener.session is None
    user = h.try_connect("b", will=will, username="meter")
    assert user.connack.reason_code == ReasonCode.QOS_NOT_SUPPORTED
    assert h.connect("c", will=will, listener_max_qos=1).session is not None


def test_resumed_session_is_downgraded_to_the_new_ceiling() -> None:
    h = _harness()
    first = h.connect("c", clean=False, expiry=600)
    assert first.subscribe("a/#", qos=2).reason_codes == (2,)
    first.drop()
    again = h.connect("c", clean=False, listener_max_qos=1)
    assert again.connack.session_present
    entry = h.broker.subscriptions.get("c", "a/#")
    assert entry is not None
    assert entry.subscription.qos == 1
    h.connect("pub").publish("a/b", qos=2)
    assert [m.qos for m in again.take_publishes()] == [1]
