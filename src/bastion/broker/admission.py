"""CONNECT admission: client identifier, credentials, will, session expiry and keep alive.

``core.py`` asks ``admit`` whether a CONNECT is accepted and builds the CONNACK from the
result with ``connack_properties``; nothing here touches session state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from bastion.broker.messages import is_broker_topic
from bastion.broker.securitylog import DEFENCE_OF_RULE
from bastion.broker.sessions import NEVER_EXPIRES
from bastion.broker.stats import Defence
from bastion.config.schema import MqttSettings
from bastion.mqtt.packets import NO_PROPERTIES, Connect, Properties, ProtocolVersion, Will
from bastion.mqtt.reason_codes import ReasonCode
from bastion.security.policy import AuthResult, ClientIdentity, Policy
from bastion.security.validation import MessageRules

MQTT_3_1_MAX_CLIENT_ID = 23  # MQTT 3.1 (protocol level 3) refuses longer identifiers
DEFAULT_RECEIVE_MAXIMUM = 65535  # the client's Receive Maximum when it sends none


@dataclass(frozen=True, slots=True)
class Refusal:
    """A CONNECT that is refused: the CONNACK reason code and a reason for people.

    ``defence`` names the check that refused it, when the refusal is a security event.
    """

    reason: int
    message: str
    defence: Defence | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """An accepted CONNECT, with every value the broker negotiated for the connection."""

    client_id: str
    assigned: bool  # the broker chose the client id
    identity: ClientIdentity
    session_expiry: int  # effective Session Expiry Interval, seconds
    requested_expiry: int  # what the client asked for (MQTT 5), else the effective value
    keep_alive: int  # effective keep alive, seconds (0 = none)
    keep_alive_changed: bool  # differs from the client's: told as Server Keep Alive
    window: int  # outbound QoS 1/2 messages allowed unacknowledged
    problem_information: bool  # the client accepts reason strings
    max_qos: int  # the connection's Maximum QoS: server, listener and user ceilings
    auth_method: str | None = None  # MQTT 5 enhanced authentication method used, echoed
    auth_data: bytes | None = None  # its last message for the client (CONNACK)


def admit(
    packet: Connect,
    peer: str,
    settings: MqttSettings,
    policy: Policy,
    assign_id: Callable[[], str],
    *,
    rules: MessageRules,
    auth: AuthResult | None = None,
    listener_max_qos: int | None = None,
) -> Admission | Refusal:
    """Decide whether ``packet`` is accepted, in the order the spec checks (§3.1.4).

    ``auth`` is the answer of ``policy.authenticate`` when the transport already asked it
    (off the event loop: password hashing is slow on purpose); otherwise it is asked here.
    ``listener_max_qos`` is the QoS ceiling of the listener the client came through.
    A CONNECT with an Authentication Method is refused (0x8C) unless ``auth`` is the outcome
    of the transport's exchange for that method (a failed outcome keeps its own code).
    """
    v5 = packet.protocol_version >= ProtocolVersion.MQTT_5
    props = packet.properties
    method = props.authentication_method if v5 else None
    if method is not None and (
        auth is None or (not auth.reason_code and auth.auth_method != method)
    ):
        return Refusal(
            ReasonCode.BAD_AUTHENTICATION_METHOD,
            f"authentication method {method!r} is not supported",
        )
    if v5 and method is None and props.authentication_data is not None:
        return Refusal(  # §3.1.2.11.10
            ReasonCode.PROTOCOL_ERROR, "Authentication Data without an Authentication Method"
        )
    client_id, assigned = packet.client_id, False
    if not client_id:
        if not v5 and not packet.clean_start:
            return Refusal(
                ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
                "an empty client identifier needs a clean session",
            )
        client_id, assigned = assign_id(), True
    limit = settings.max_client_id_length
    if packet.protocol_version == ProtocolVersion.MQTT_3_1:
        limit = min(limit, MQTT_3_1_MAX_CLIENT_ID)
    if len(client_id.encode("utf-8", "surrogatepass")) > limit:
        return Refusal(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "client identifier is too long")
    result = auth or policy.authenticate(client_id, packet.username, packet.password, peer)
    if result.reason_code:
        return Refusal(result.reason_code, result.message or "not authorized")
    identity = result.identity or ClientIdentity(client_id, packet.username, peer)
    if identity.client_id != client_id:  # authenticated before the id was assigned
        identity = replace(identity, client_id=client_id)
    max_qos = effective_max_qos(
        settings.max_qos, listener_max_qos, policy.max_qos_for(identity.username)
    )
    if packet.will is not None:
        refusal = check_will(packet.will, identity, settings, policy, rules, max_qos=max_qos)
        if refusal is not None:
            return refusal
    elif policy.will_required(identity.username):
        return Refusal(
            ReasonCode.NOT_AUTHORIZED,
            "this account must set a Last Will (e.g. status/<client> = offline)",
        )
    expiry, requested = session_expiry(packet, settings)
    keep_alive = effective_keep_alive(packet.keep_alive, settings.max_keepalive)
    receive_maximum = props.receive_maximum if v5 else None
    return Admission(
        client_id=client_id,
        assigned=assigned,
        identity=identity,
        session_expiry=expiry,
        requested_expiry=requested,
        keep_alive=keep_alive,
        keep_alive_changed=keep_alive != packet.keep_alive,
        window=min(settings.max_inflight_messages, receive_maximum or DEFAULT_RECEIVE_MAXIMUM),
        problem_information=props.request_problem_information != 0,
        max_qos=max_qos,
        auth_method=method,
        auth_data=result.auth_data if method is not None else None,
    )


def check_will(
    will: Will,
    identity: ClientIdentity,
    settings: MqttSettings,
    policy: Policy,
    rules: MessageRules,
    *,
    max_qos: int,
) -> Refusal | None:
    """Refuse a will the client could not publish as a message (§3.1.2.5 - §3.1.2.7).

    The content rules come first: a topic over the limits (0x90), a payload over
    ``max_message_size`` (0x97) or not UTF-8 although marked so (0x99, §3.1.3.2.3).
    ``max_qos`` is the connection's ceiling (``effective_max_qos``); a will QoS above it
    gets 0x9B (§3.2.2.3.4).
    """
    rejection = rules.check_message(will.topic, will.payload, will.properties)
    if rejection is not None:
        return Refusal(
            rejection.reason, "will: " + rejection.message, DEFENCE_OF_RULE[rejection.rule]
        )
    if is_broker_topic(will.topic) or not policy.may_publish(identity, will.topic):
        return Refusal(ReasonCode.NOT_AUTHORIZED, "not authorized to publish the will topic")
    if will.qos > max_qos:
        return Refusal(ReasonCode.QOS_NOT_SUPPORTED, "will QoS above the Maximum QoS")
    if will.retain and not settings.retain_available:
        return Refusal(ReasonCode.RETAIN_NOT_SUPPORTED, "retained wills are not supported")
    return None


def effective_max_qos(server: int, listener: int | None, user: int | None) -> int:
    """A connection's Maximum QoS: the lowest of the server's, listener's and user's ceilings."""
    return min(server, 2 if listener is None else listener, 2 if user is None else user)


def session_expiry(packet: Connect, settings: MqttSettings) -> tuple[int, int]:
    """(effective, requested) Session Expiry Interval in seconds.

    MQTT 5 asks with a property, capped by the server; MQTT 3.1.1 ``clean_session=0`` keeps
    the session ``persistent_client_expiration`` seconds (forever if unset), ``=1`` not at all.
    """
    if packet.protocol_version >= ProtocolVersion.MQTT_5:
        requested = packet.properties.session_expiry_interval or 0
        return min(requested, settings.max_session_expiry_interval), requested
    if packet.clean_start:
        return 0, 0
    expiry = settings.persistent_client_expiration
    expiry = NEVER_EXPIRES if expiry is None else expiry
    return expiry, expiry


def effective_keep_alive(requested: int, maximum: int) -> int:
    """The keep alive to enforce: the server's maximum replaces 0 (none) and larger values."""
    if maximum and (requested == 0 or requested > maximum):
        return maximum
    return requested


def connack_properties(admission: Admission, packet: Connect, settings: MqttSettings) -> Properties:
    """CONNACK properties of an accepted MQTT 5 connection (§3.2.2.3)."""
    available = {True: None, False: 0}
    request_info = packet.properties.request_response_information == 1
    capped = admission.session_expiry != admission.requested_expiry
    return Properties(
        session_expiry_interval=admission.session_expiry if capped else None,
        assigned_client_identifier=admission.client_id if admission.assigned else None,
        server_keep_alive=admission.keep_alive if admission.keep_alive_changed else None,
        receive_maximum=settings.receive_maximum,
        maximum_packet_size=settings.max_packet_size,
        topic_alias_maximum=settings.topic_alias_maximum or None,
        maximum_qos=admission.max_qos if admission.max_qos < 2 else None,
        retain_available=available[settings.retain_available],
        wildcard_subscription_available=available[settings.wildcard_subscription_available],
        subscription_identifier_available=available[settings.subscription_identifier_available],
        shared_subscription_available=available[settings.shared_subscription_available],
        response_information=f"response/{admission.client_id}" if request_info else None,
        authentication_method=admission.auth_method,
        authentication_data=admission.auth_data,
    )


def refusal_properties(refusal: Refusal, packet: Connect) -> Properties:
    """CONNACK properties of a refused MQTT 5 connection: a reason string if welcome."""
    if (
        packet.protocol_version < ProtocolVersion.MQTT_5
        or packet.properties.request_problem_information == 0
    ):
        return NO_PROPERTIES
    return Properties(reason_string=refusal.message)


__all__ = [
    "Admission",
    "Refusal",
    "admit",
    "check_will",
    "connack_properties",
    "effective_keep_alive",
    "effective_max_qos",
    "refusal_properties",
    "session_expiry",
]
