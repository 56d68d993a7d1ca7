"""02 authorization: a Mosquitto acl_file, deny by default, checked on every operation —
subscribe, publish, delivery, retained messages, wills, ``$SYS`` — plus per-user client-id
rules against session takeover. Every refused operation leaves bystanders undisturbed.

"Nothing was delivered" is proved without sleeping: after the attack an allowed sentinel is
published, and it must be the first thing the would-be receiver gets.

mosquitto 2.0.11 grants refused subscriptions silently (SUBACK with the QoS, then never delivers)
and accepts a CONNECT whose will it may not publish; those explicit refusals are Bastion-only.
"""

from __future__ import annotations

import time

import pytest

from support.brokerproc import USING_MOSQUITTO, Broker, bastion_only
from support.clients import Clients, loopback_address, unique
from support.pahoclient import V5, V311, PahoClient, PahoWill
from support.rawclient import MQTT_5, MQTT_311, ConnectionClosedError, PacketType, RawClient, Will

from .deployment import ADMIN, ALICE, BOB, CAROL, DEVICES, PASSWORDS
from .harness import (
    CLIENT_ID_INVALID,
    NOT_AUTHORIZED,
    SUBACK_FAILURE,
    Bystanders,
    connect_as,
    expect_first,
    publish_sentinel,
    raw_as,
    refusal,
    start_login,
    try_login,
)

pytestmark = pytest.mark.security

VERSIONS = pytest.mark.parametrize("version", [V5, V311], ids=["v5", "v311"])
assert (V5, V311) == (MQTT_5, MQTT_311)  # paho's and the raw client's version numbers agree
NO_MATCHING_SUBSCRIBERS = 0x10


def _denied_suback(version: int) -> int:
    return NOT_AUTHORIZED if version == V5 else SUBACK_FAILURE


def _forge(raw: RawClient, topic: str, *, qos: int = 1, retain: bool = False) -> int | None:
    """Publish where ``raw`` may not, and wait until the broker has dealt with it.

    Returns the acknowledgement's reason code (0 for an answered QoS 0 publish, checked with a
    PINGREQ behind it), or None when the broker cut the connection instead.
    """
    raw.publish(topic, b"forged", qos=qos, retain=retain)
    try:
        if qos == 0:
            raw.ping()
            return 0
        return raw.expect_ack(PacketType.PUBACK if qos == 1 else PacketType.PUBREC).reason_code
    except (ConnectionClosedError, AssertionError):  # DISCONNECT or close: refused too
        return None


# ----------------------------------------------------------------- subscribe


@bastion_only("mosquitto grants refused subscriptions silently")
@VERSIONS
def test_unauthorized_subscribe_is_refused_explicitly(
    broker: Broker, mqtt: Clients, bystanders: Bystanders, ns: str, version: int
) -> None:
    """Per filter: outside her subtree, or wider than her rules (wildcards), is refused.

    Bastion grants a filter only if one read rule covers it and no deny rule overlaps it
    (``security/acl.py``), so a granted subscription never carries a forbidden message.
    """
    alice = connect_as(mqtt, broker, ALICE, version)
    filters = [
        (f"sec/alice/{ns}/#", 1),  # hers
        (f"sec/bob/{ns}/#", 1),  # someone else's
        ("sec/#", 1),  # covers topics she may not read
        ("#", 1),
        (f"sec/+/{ns}/x", 1),
        (f"sec/shared/{ns}/status", 0),  # read-only for her: subscribing is reading
        ("sec/shared/#", 0),  # overlaps `topic deny sec/shared/+/secret/#`
    ]
    denied = _denied_suback(version)
    assert alice.subscribe_many(filters) == [1, denied, denied, denied, denied, 0, denied]
    assert alice.subscribe(f"sec/bob/{ns}/+", 0) == [denied]
    assert alice.is_connected(), "a refused subscription is no reason to disconnect"
    bystanders.exchange()


@VERSIONS
def test_unauthorized_subscriber_never_receives(
    *,
    broker: Broker,
    mqtt: Clients,
    admin: PahoClient,
    bystanders: Bystanders,
    ns: str,
    version: int,
) -> None:
    """Whatever the SUBACK said, nothing outside alice's rules reaches her."""
    alice = connect_as(mqtt, broker, ALICE, version)
    bob = connect_as(mqtt, broker, BOB, V5)
    assert bob.subscribe(f"sec/bob/{ns}/#", 1) == [1]
    alice.subscribe_many([(f"sec/bob/{ns}/#", 1), ("sec/#", 1), (f"sec/alice/{ns}/#", 1)])
    admin.publish(f"sec/bob/{ns}/private", b"for bob only", 1)
    assert bob.expect().payload == b"for bob only"  # the well-behaved receiver gets it
    topic, payload = publish_sentinel(admin, f"sec/alice/{ns}/sentinel")
    expect_first(alice, topic, payload)
    bystanders.exchange()


@VERSIONS
def test_deny_rule_beats_the_grant(
    broker: Broker, mqtt: Clients, admin: PahoClient, ns: str, version: int
) -> None:
    """``topic read sec/shared/#`` with ``topic deny sec/shared/+/secret/#``: the secrets never
    reach alice (Bastion refuses the overlapping filter; mosquitto filters at delivery)."""
    alice = connect_as(mqtt, broker, ALICE, version)
    wide = alice.subscribe(f"sec/shared/{ns}/#", 1)
    if not USING_MOSQUITTO:
        assert wide == [_denied_suback(version)]
    assert alice.subscribe(f"sec/shared/{ns}/public", 1) == [1]
    admin.publish(f"sec/shared/{ns}/secret/plans", b"classified", 1)
    topic, payload = publish_sentinel(admin, f"sec/shared/{ns}/public")
    expect_first(alice, topic, payload)
    assert alice.is_connected()


# ----------------------------------------------------------------- publish


@pytest.mark.parametrize("qos", [1, 2])
def test_unauthorized_publish_is_refused_with_0x87(
    *, broker: Broker, mqtt: Clients, admin: PahoClient, bystanders: Bystanders, ns: str, qos: int
) -> None:
    """MQTT 5: PUBACK / PUBREC 0x87; the client stays connected; nothing is delivered."""
    bob = connect_as(mqtt, broker, BOB)
    assert bob.subscribe(f"sec/bob/{ns}/#", 2) == [2]
    alice = raw_as(mqtt, broker, ALICE, MQTT_5)
    assert _forge(alice, f"sec/bob/{ns}/cmd", qos=qos) == NOT_AUTHORIZED
    assert alice.check_open(0.1), "a refused publish is answered, not punished with a disconnect"
    assert alice.publish_qos1(f"sec/alice/{ns}/ok").reason_code in (0, NO_MATCHING_SUBSCRIBERS)
    topic, payload = publish_sentinel(admin, f"sec/bob/{ns}/sentinel")
    expect_first(bob, topic, payload)
    bystanders.exchange()


def test_unauthorized_publish_311_is_never_delivered(
    broker: Broker, mqtt: Clients, admin: PahoClient, bystanders: Bystanders, ns: str
) -> None:
    """3.1.1 cannot say no in a PUBACK: the broker acknowledges or disconnects, never routes."""
    bob = connect_as(mqtt, broker, BOB)
    assert bob.subscribe(f"sec/bob/{ns}/#", 1) == [1]
    for qos in (0, 1, 2):
        alice = raw_as(mqtt, broker, ALICE, MQTT_311)
        _forge(alice, f"sec/bob/{ns}/cmd", qos=qos)  # acknowledged or cut off: both fine
    topic, payload = publish_sentinel(admin, f"sec/bob/{ns}/sentinel")
    expect_first(bob, topic, payload)
    bystanders.exchange()


def test_client_id_pattern_rules(broker: Broker, mqtt: Clients, ns: str) -> None:
    """``pattern readwrite sec/clients/%c/#``: each client writes under its own id only."""
    admin = connect_as(mqtt, broker, ADMIN)
    assert admin.subscribe(f"sec/clients/+/{ns}", 1) == [1]
    own_id, other_id = unique(ALICE), unique(BOB)
    alice = raw_as(mqtt, broker, ALICE, MQTT_5, client_id=own_id)
    assert alice.publish_qos1(f"sec/clients/{own_id}/{ns}", b"mine").reason_code == 0
    assert alice.publish_qos1(f"sec/clients/{other_id}/{ns}").reason_code == NOT_AUTHORIZED
    message = admin.expect()
    assert (message.topic, message.payload) == (f"sec/clients/{own_id}/{ns}", b"mine")
    admin.expect_none(0.3)


# ----------------------------------------------------------------- retained messages


@VERSIONS
def test_unauthorized_retain_is_not_stored(
    *,
    broker: Broker,
    mqtt: Clients,
    admin: PahoClient,
    bystanders: Bystanders,
    ns: str,
    version: int,
) -> None:
    alice = raw_as(mqtt, broker, ALICE, version)
    reason = _forge(alice, f"sec/bob/{ns}/state", retain=True)
    if version == MQTT_5:
        assert reason == NOT_AUTHORIZED
    admin.publish(f"sec/bob/{ns}/legit", b"real retained", 1, retain=True)
    bob = connect_as(mqtt, broker, BOB)
    assert bob.subscribe(f"sec/bob/{ns}/#", 1) == [1]
    retained = bob.collect(0.5)
    assert [(m.topic, m.payload) for m in retained] == [(f"sec/bob/{ns}/legit", b"real retained")]
    bystanders.exchange()


def test_retained_messages_are_filtered_by_read_permission(
    broker: Broker, mqtt: Clients, admin: PahoClient, ns: str
) -> None:
    admin.publish(f"sec/shared/{ns}/secret/key", b"classified", 1, retain=True)
    admin.publish(f"sec/shared/{ns}/status", b"public", 1, retain=True)
    alice = connect_as(mqtt, broker, ALICE)
    alice.subscribe(f"sec/shared/{ns}/#", 1)  # refused by Bastion, filtered by mosquitto
    assert alice.subscribe(f"sec/shared/{ns}/status", 1) == [1]
    carol = connect_as(mqtt, broker, CAROL)  # no rules at all
    carol.subscribe(f"sec/shared/{ns}/#", 1)
    retained = alice.collect(0.5)
    assert {(m.topic, m.payload) for m in retained} == {(f"sec/shared/{ns}/status", b"public")}
    carol.expect_none(0.1)


# ----------------------------------------------------------------- wills


@bastion_only("mosquitto accepts a CONNECT whose will topic is not allowed")
@VERSIONS
def test_unauthorized_will_topic_refuses_the_connect(
    broker: Broker, mqtt: Clients, bystanders: Bystanders, ns: str, version: int
) -> None:
    outcome = try_login(
        mqtt,
        broker,
        version,
        username=ALICE,
        password=PASSWORDS[ALICE].encode(),
        will=Will(f"sec/bob/{ns}/status", b"forged offline", qos=1, retain=True),
    )
    assert outcome.code == refusal(version, NOT_AUTHORIZED), outcome
    assert outcome.closed
    allowed_will = try_login(
        mqtt,
        broker,
        version,
        username=ALICE,
        password=PASSWORDS[ALICE].encode(),
        will=Will(f"sec/alice/{ns}/status", b"offline", qos=1, retain=True),
    )
    assert allowed_will.accepted, allowed_will
    bystanders.exchange()


@VERSIONS
def test_unauthorized_will_is_never_published(
    broker: Broker, mqtt: Clients, admin: PahoClient, ns: str, version: int
) -> None:
    bob = connect_as(mqtt, broker, BOB)
    assert bob.subscribe(f"sec/bob/{ns}/#", 1) == [1]
    will = PahoWill(f"sec/bob/{ns}/status", b"forged offline", 1, retain=True)
    alice = mqtt.paho(
        broker,
        version,
        username=ALICE,
        password=PASSWORDS[ALICE],
        will=will,
        expect_success=False,
    )
    if alice.connack.reason_code == 0:  # mosquitto: accepted, so make the will fire
        alice.kill_connection()
    topic, payload = publish_sentinel(admin, f"sec/bob/{ns}/sentinel")
    expect_first(bob, topic, payload)
    late = connect_as(mqtt, broker, BOB)
    assert late.subscribe(f"sec/bob/{ns}/status", 1) == [1]
    late.expect_none(0.3)  # nothing retained either


# ----------------------------------------------------------------- client ids and $SYS


@bastion_only("mosquitto has no per-user client-id rules: any user takes over any session")
@pytest.mark.parametrize(
    ("version", "thieves"),
    [(V5, (CAROL, DEVICES[0])), (V311, (DEVICES[1], DEVICES[2]))],
    ids=["v5", "v311"],
)
def test_cross_user_client_id_takeover_is_refused(
    *,
    broker: Broker,
    mqtt: Clients,
    admin: PahoClient,
    ns: str,
    version: int,
    thieves: tuple[str, str],
) -> None:
    """``client_id_patterns = ["%u", "%u-*"]``: other users cannot log in with alice's client
    id (nor plain ``alice``), so they can neither take over nor disturb her session."""
    alice_id = unique(ALICE)
    alice = connect_as(mqtt, broker, ALICE, V5, client_id=alice_id)
    assert alice.subscribe(f"sec/alice/{ns}/#", 1) == [1]
    attempts = {
        (thief, stolen_id): start_login(
            mqtt,
            broker,
            version,
            username=thief,
            password=PASSWORDS[thief].encode(),
            client_id=stolen_id,
            source=loopback_address(),
        )
        for thief, stolen_id in zip(thieves, (alice_id, ALICE), strict=True)
    }
    for (thief, stolen_id), pending in attempts.items():
        outcome = pending.finish()
        assert outcome.code == refusal(version, CLIENT_ID_INVALID), (
            f"{thief} as {stolen_id}: {outcome}"
        )
        assert outcome.closed
    own = try_login(
        mqtt, broker, version, username=thieves[0], password=PASSWORDS[thieves[0]].encode()
    )
    assert own.accepted, f"{thieves[0]} with a client id of her own: {own}"
    # alice's session was not taken over: still connected, still receiving.
    assert alice.is_connected() and alice.disconnected_info() is None
    topic, payload = publish_sentinel(admin, f"sec/alice/{ns}/still-mine")
    expect_first(alice, topic, payload)
    if broker.kind == "bastion":  # audited as what it is: not a wrong password
        log = broker.log_text()
        for thief, stolen_id in attempts:
            assert any(
                "client_id_denied" in line and stolen_id in line for line in log.splitlines()
            ), f"no client_id_denied record for {thief} as {stolen_id}"


@VERSIONS
def test_sys_topics_only_for_granted_users(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    admin = connect_as(mqtt, broker, ADMIN, version)
    spies = [connect_as(mqtt, broker, user, version) for user in (ALICE, CAROL)]
    for spy in spies:
        codes = spy.subscribe_many([("$SYS/#", 0), ("$SYS/broker/clients/connected", 0)])
        if not USING_MOSQUITTO:
            assert codes == [_denied_suback(version)] * 2
    assert spies[0].subscribe(f"sec/shared/{ns}/after-sys", 1) == [1]
    assert admin.subscribe("$SYS/#", 0) == [0]
    deadline = time.monotonic() + 5.0  # $SYS updates every second (mqtt.sys_interval = 1)
    sys_topics: set[str] = set()
    while len(sys_topics) < 2 and time.monotonic() < deadline:
        message = admin.expect(timeout=max(deadline - time.monotonic(), 0.01))
        assert message.topic.startswith("$SYS/"), message.topic
        sys_topics.add(message.topic)
    # Whatever the broker published on $SYS so far went to the admin and nobody else.
    topic, payload = publish_sentinel(connect_as(mqtt, broker, BOB), f"sec/shared/{ns}/after-sys")
    expect_first(spies[0], topic, payload)
    spies[1].expect_none(0.2)
