"""Broker core, CONNECT/CONNACK: properties, refusals, client ids, takeover, session present.

MQTT 5 §3.1 / §3.2 and MQTT 3.1.1 §3.1 / §3.2, driven through ``Broker.connect`` with a
recording fake link.
"""

from __future__ import annotations

from brokerkit import DenyingPolicy, FakeLink, Harness

from bastion.mqtt.packets import Auth, Connack, Connect, Pingreq, Properties, Suback, Will
from bastion.mqtt.reason_codes import ReasonCode
from bastion.security.policy import AuthResult, ClientIdentity, Policy


def test_v5_connack_announces_server_limits() -> None:
    h = Harness()
    client = h.connect("c1", keep_alive=30)
    props = client.connack.properties
    assert client.connack.session_present is False
    assert props.receive_maximum == 1024
    assert props.maximum_packet_size == 1_048_576
    assert props.topic_alias_maximum == 64
    # Everything available and QoS 2 supported: those properties stay absent (§3.2.2.3).
    assert props.maximum_qos is None
    assert props.retain_available is None
    assert props.wildcard_subscription_available is None
    assert props.subscription_identifier_available is None
    assert props.shared_subscription_available is None
    assert props.server_keep_alive is None
    assert props.assigned_client_identifier is None
    assert props.session_expiry_interval is None
    assert props.response_information is None
    assert client.link.keep_alive == 30


def test_v5_connack_announces_features_that_are_off() -> None:
    h = Harness(
        max_qos=1,
        retain_available=False,
        wildcard_subscription_available=False,
        subscription_identifier_available=False,
        shared_subscription_available=False,
        topic_alias_maximum=0,
    )
    props = h.connect("c1").connack.properties
    assert props.maximum_qos == 1
    assert props.retain_available == 0
    assert props.wildcard_subscription_available == 0
    assert props.subscription_identifier_available == 0
    assert props.shared_subscription_available == 0
    assert props.topic_alias_maximum is None


def test_v311_connack_has_no_properties() -> None:
    h = Harness(max_qos=1)
    client = h.connect("c1", version=4)
    assert client.connack.properties == Properties()


def test_keep_alive_zero_or_too_long_is_replaced_by_server_maximum() -> None:
    h = Harness(max_keepalive=120)
    zero = h.connect("zero", keep_alive=0)
    assert zero.connack.properties.server_keep_alive == 120
    assert zero.link.keep_alive == 120
    long = h.connect("long", keep_alive=600)
    assert long.connack.properties.server_keep_alive == 120
    assert long.link.keep_alive == 120
    fine = h.connect("fine", keep_alive=60)
    assert fine.connack.properties.server_keep_alive is None
    assert fine.link.keep_alive == 60
    old = h.connect("old", version=4, keep_alive=0)
    assert old.link.keep_alive == 120  # enforced, though a 3.1.1 client cannot be told


def test_empty_client_id_gets_one_assigned() -> None:
    h = Harness(client_id_prefix="dev-")
    v5 = h.connect("")
    assigned = v5.connack.properties.assigned_client_identifier
    assert assigned is not None and assigned.startswith("dev-")
    assert v5.live.client_id == assigned
    v311 = h.connect("", version=4, clean=True)
    assert v311.live.client_id.startswith("dev-")
    assert v311.live.client_id != assigned
    # MQTT 5 allows an assigned identifier with a persistent session too.
    persistent = h.connect("", clean=False, expiry=60)
    assert persistent.connack.properties.assigned_client_identifier is not None


def test_v311_empty_client_id_without_clean_session_is_rejected() -> None:
    client = Harness().try_connect("", version=4, clean=False)
    assert client.session is None
    assert client.connack.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
    assert client.link.closes == [None]


def test_client_id_longer_than_the_limit_is_rejected() -> None:
    h = Harness(max_client_id_length=23)
    assert h.connect("x" * 23).session is not None
    client = h.try_connect("x" * 24)
    assert client.connack.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
    assert client.connack.properties.reason_string
    assert client.session is None and client.link.closed


def test_mqtt_3_1_limits_client_ids_to_23_characters() -> None:
    h = Harness()
    assert h.try_connect("y" * 24, version=3).connack.reason_code == 0x85
    assert h.try_connect("y" * 23, version=3).connack.reason_code == 0


def test_authentication_failure_is_answered_and_closed() -> None:
    h = Harness(Policy(allow_anonymous=False))
    client = h.try_connect("c1")
    assert client.connack.reason_code == ReasonCode.NOT_AUTHORIZED
    assert client.connack.session_present is False
    assert client.link.closes == [None]
    assert h.broker.stats.clients_connected == 0
    assert len(h.broker.sessions) == 0


def test_reason_string_only_when_problem_information_is_requested() -> None:
    h = Harness(Policy(allow_anonymous=False))
    quiet = h.try_connect("c1", properties=Properties(request_problem_information=0))
    assert quiet.connack.properties.reason_string is None
    chatty = h.try_connect("c1")
    assert chatty.connack.properties.reason_string


def test_authenticate_sees_client_id_credentials_and_peer() -> None:
    seen: list[tuple[str, str | None, bytes | None, str]] = []

    class Recording(Policy):
        def authenticate(
            self,
            client_id: str,
            username: str | None,
            password: bytes | None,
            peer: str,
            certificate_identity: str | None = None,
        ) -> AuthResult:
            seen.append((client_id, username, password, peer))
            return AuthResult(ReasonCode.BAD_USER_NAME_OR_PASSWORD, message="bad password")

    h = Harness(Recording(allow_anonymous=False))
    client = h.try_connect("c1", username="alice", link=FakeLink(peer="10.0.0.1:1234"))
    assert seen == [("c1", "alice", None, "10.0.0.1:1234")]
    assert client.connack.reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    assert client.connack.properties.reason_string == "bad password"


def test_enhanced_authentication_is_refused() -> None:
    client = Harness().try_connect("c1", properties=Properties(authentication_method="SCRAM"))
    assert client.connack.reason_code == ReasonCode.BAD_AUTHENTICATION_METHOD
    assert client.session is None


def test_will_checks_refuse_the_connection() -> None:
    h = Harness(DenyingPolicy(publish=("secret",)), max_qos=1, retain_available=False)
    denied = h.try_connect("a", will=Will("secret", b"bye"))
    assert denied.connack.reason_code == ReasonCode.NOT_AUTHORIZED
    sys_will = h.try_connect("b", will=Will("$SYS/broker/fake", b"bye"))
    assert sys_will.connack.reason_code == ReasonCode.NOT_AUTHORIZED
    qos = h.try_connect("c", will=Will("ok", b"bye", qos=2))
    assert qos.connack.reason_code == ReasonCode.QOS_NOT_SUPPORTED
    retained = h.try_connect("d", will=Will("ok", b"bye", retain=True))
    assert retained.connack.reason_code == ReasonCode.RETAIN_NOT_SUPPORTED
    assert h.connect("e", will=Will("ok", b"bye", qos=1)).session is not None


def test_request_response_information() -> None:
    h = Harness()
    asked = h.connect("c1", properties=Properties(request_response_information=1))
    assert asked.connack.properties.response_information == "response/c1"
    assert h.connect("c2").connack.properties.response_information is None


def test_session_expiry_is_capped_and_echoed() -> None:
    h = Harness(max_session_expiry_interval=300)
    capped = h.connect("c1", expiry=3600)
    assert capped.connack.properties.session_expiry_interval == 300
    assert capped.live.state.expiry_interval == 300
    within = h.connect("c2", expiry=60)
    assert within.connack.properties.session_expiry_interval is None
    assert within.live.state.expiry_interval == 60


def test_v311_session_expiry_follows_clean_session() -> None:
    h = Harness(persistent_client_expiration=3600)
    assert h.connect("p", version=4, clean=False).live.state.expiry_interval == 3600
    assert h.connect("c", version=4, clean=True).live.state.expiry_interval == 0
    forever = Harness()
    state = forever.connect("p", version=4, clean=False).live.state
    assert state.expiry_interval == 0xFFFFFFFF


def test_resume_sets_session_present_and_keeps_subscriptions() -> None:
    h = Harness()
    first = h.connect("c1", clean=False, expiry=60)
    first.subscribe("a/b", qos=1)
    first.disconnect()
    h.advance(10)
    second = h.connect("c1", clean=False, expiry=60)
    assert second.connack.session_present is True
    publisher = h.connect("pub")
    publisher.publish("a/b", b"hi", qos=1)
    assert [p.payload for p in second.take_publishes()] == [b"hi"]


def test_clean_start_discards_the_session() -> None:
    h = Harness()
    first = h.connect("c1", clean=False, expiry=60)
    first.subscribe("a/b", qos=1)
    first.disconnect()
    second = h.connect("c1", clean=True, expiry=60)
    assert second.connack.session_present is False
    h.connect("pub").publish("a/b", b"hi", qos=1)
    assert second.take() == []
    assert h.broker.stats.subscriptions_count == 0


def test_session_with_zero_expiry_ends_with_the_connection() -> None:
    h = Harness()
    first = h.connect("c1", clean=False)  # MQTT 5 default expiry: 0
    first.subscribe("a/b")
    first.drop()
    assert "c1" not in h.broker.sessions
    assert h.connect("c1", clean=False).connack.session_present is False


def test_takeover_closes_the_old_connection_with_0x8e() -> None:
    h = Harness()
    old = h.connect("c1", clean=False, expiry=60)
    old.subscribe("a/b", qos=1)
    new = h.connect("c1", clean=False, expiry=60)
    assert old.link.closes == [ReasonCode.SESSION_TAKEN_OVER]
    assert new.connack.session_present is True
    assert h.broker.stats.clients_connected == 1
    # The old transport reports its end later: it must not disturb the new connection.
    old.drop()
    assert new.live.attached
    assert h.broker.stats.clients_connected == 1
    # Packets still decoded on the old connection are ignored.
    old.publish("a/b", b"stale")
    h.connect("pub").publish("a/b", b"fresh", qos=1)
    assert [p.payload for p in new.take_publishes()] == [b"fresh"]


def test_takeover_with_clean_start_publishes_the_old_will() -> None:
    h = Harness()
    watcher = h.connect("w")
    watcher.subscribe("wills/#")
    will = Will("wills/c1", b"gone", properties=Properties(will_delay_interval=30))
    h.connect("c1", clean=False, expiry=60, will=will)
    h.connect("c1", clean=True)  # the old session ends, so its delayed will fires now
    assert [p.payload for p in watcher.take_publishes()] == [b"gone"]


def test_takeover_resuming_within_will_delay_cancels_the_will() -> None:
    h = Harness()
    watcher = h.connect("w")
    watcher.subscribe("wills/#")
    will = Will("wills/c1", b"gone", properties=Properties(will_delay_interval=30))
    h.connect("c1", clean=False, expiry=60, will=will)
    h.connect("c1", clean=False, expiry=60)
    h.advance(60)
    assert watcher.take() == []


def test_takeover_publishes_will_without_delay() -> None:
    h = Harness()
    watcher = h.connect("w")
    watcher.subscribe("wills/#")
    h.connect("c1", clean=False, expiry=60, will=Will("wills/c1", b"gone"))
    h.connect("c1", clean=False, expiry=60)
    assert [p.payload for p in watcher.take_publishes()] == [b"gone"]


def test_connect_after_shutdown_is_refused() -> None:
    h = Harness()
    h.broker.shutdown(h.now)
    client = h.try_connect("late")
    assert client.connack.reason_code == ReasonCode.SERVER_UNAVAILABLE
    assert client.link.closed


def test_packets_a_client_may_not_send_close_the_connection() -> None:
    h = Harness()
    watcher = h.connect("w")
    watcher.subscribe("wills/#")
    v5 = h.connect("c1", will=Will("wills/c1", b"gone"))
    v5.send(Connect(5, "c1"))  # a second CONNECT (§3.1.0-2)
    assert v5.link.closes == [ReasonCode.PROTOCOL_ERROR]
    v5.send(Pingreq())  # ignored once the broker closed the connection
    assert v5.take() == []
    v5.drop()
    assert [p.payload for p in watcher.take_publishes()] == [b"gone"]  # not a clean close
    auth = h.connect("c2")
    auth.send(Auth())  # no Authentication Method in CONNECT
    assert auth.link.closes == [ReasonCode.PROTOCOL_ERROR]
    old = h.connect("c3", version=4)
    old.send(Suback(1, (0,)))  # a server-to-client packet
    assert old.link.closes == [None]  # 3.1.1: no DISCONNECT, just close


def test_device_accounts_must_set_a_will() -> None:
    h = Harness(Policy(allow_anonymous=True, require_will=("sensor*",)))

    def connect(username: str, will: Will | None) -> Connack:
        link = FakeLink()
        packet = Connect(5, f"{username}-c", will=will, username=username)
        auth = AuthResult(0, ClientIdentity(f"{username}-c", username, link.peer))
        h.broker.connect(link, packet, h.now, auth=auth)
        connack = link.sent[0]
        assert isinstance(connack, Connack)
        return connack

    refused = connect("sensor1", None)
    assert refused.reason_code == ReasonCode.NOT_AUTHORIZED
    assert "Last Will" in (refused.properties.reason_string or "")
    assert connect("sensor2", Will("status/sensor2", b"offline", retain=True)).reason_code == 0
    assert connect("dashboard", None).reason_code == 0
