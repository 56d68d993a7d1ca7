"""A corpus of hostile frames for ``codec.decode``, each with the reason code it must earn.

Frames are hand-written hex: the first byte, then the body (the Remaining Length is
left out: the codec decodes bodies that framing has already cut). 0x81 is Malformed
Packet, 0x82 Protocol Error, 0x84 Unsupported Protocol Version.
"""

from __future__ import annotations

import pytest

from bastion.errors import MalformedPacket, ProtocolError
from bastion.mqtt import codec

MALFORMED = 0x81
PROTOCOL = 0x82
UNSUPPORTED = 0x84

V5_CONNECT_HEAD = "0004 4d515454 05"  # "MQTT", level 5
V4_CONNECT_HEAD = "0004 4d515454 04"  # "MQTT", level 4


def case(version: int, frame: str, reason: int, name: str) -> object:
    return pytest.param(version, frame, reason, id=name)


CORPUS = [
    # --- fixed header
    case(4, "00", MALFORMED, "reserved-type-0"),
    case(4, "f0", MALFORMED, "auth-in-311"),
    case(5, "11 " + V5_CONNECT_HEAD + " 02 003c 00 0000", MALFORMED, "connect-flags"),
    case(4, "22 0000", MALFORMED, "connack-flags"),
    case(4, "41 0001", MALFORMED, "puback-flags"),
    case(4, "58 0001", MALFORMED, "pubrec-flags"),
    case(4, "60 0001", MALFORMED, "pubrel-flags-zero"),
    case(4, "63 0001", MALFORMED, "pubrel-flags-3"),
    case(4, "71 0001", MALFORMED, "pubcomp-flags"),
    case(4, "80 0001 0001 74 00", MALFORMED, "subscribe-flags"),
    case(4, "92 0001 00", MALFORMED, "suback-flags"),
    case(4, "a0 0001 0001 74", MALFORMED, "unsubscribe-flags"),
    case(4, "b2 0001", MALFORMED, "unsuback-flags"),
    case(4, "c1", MALFORMED, "pingreq-flags"),
    case(4, "d4", MALFORMED, "pingresp-flags"),
    case(4, "e8", MALFORMED, "disconnect-flags"),
    case(5, "f1", MALFORMED, "auth-flags"),
    # --- PUBLISH
    case(4, "36 0001 74 0001", MALFORMED, "publish-qos-3"),
    case(5, "3e 0001 74 0001 00", MALFORMED, "publish-qos-3-dup"),
    case(4, "38 0001 74", PROTOCOL, "publish-qos0-dup"),
    case(4, "32 0001 74 0000", MALFORMED, "publish-packet-id-0"),
    case(4, "30", MALFORMED, "publish-empty-body"),
    case(4, "30 00", MALFORMED, "publish-truncated-topic-length"),
    case(4, "30 0005", MALFORMED, "publish-truncated-topic"),
    case(4, "32 0001 74 00", MALFORMED, "publish-truncated-packet-id"),
    case(5, "30 0001 74", MALFORMED, "publish-v5-missing-property-length"),
    case(5, "30 0001 74 05 01", MALFORMED, "publish-property-length-past-end"),
    case(5, "30 0001 74 02 02 00", MALFORMED, "publish-property-value-truncated"),
    case(5, "30 0001 74 ff ff ff ff", MALFORMED, "publish-property-length-5-bytes"),
    # --- UTF-8 strings
    case(4, "30 0002 c328", MALFORMED, "utf8-bad-continuation"),
    case(4, "30 0002 c0af", MALFORMED, "utf8-overlong-slash"),
    case(4, "30 0003 e080af", MALFORMED, "utf8-overlong-3-byte"),
    case(4, "30 0003 eda080", MALFORMED, "utf8-surrogate-d800"),
    case(4, "30 0003 edbfbf", MALFORMED, "utf8-surrogate-dfff"),
    case(4, "30 0004 f4908080", MALFORMED, "utf8-above-10ffff"),
    case(4, "30 0001 80", MALFORMED, "utf8-lone-continuation"),
    case(4, "30 0002 e282", MALFORMED, "utf8-truncated-sequence"),
    case(4, "30 0001 ff", MALFORMED, "utf8-byte-ff"),
    case(4, "30 0003 610062", MALFORMED, "utf8-u0000-in-topic"),
    case(4, "30 0002 c080", MALFORMED, "utf8-overlong-u0000"),
    # --- acknowledgements
    case(4, "40 0000", MALFORMED, "puback-packet-id-0"),
    case(4, "40 00", MALFORMED, "puback-truncated"),
    case(4, "40", MALFORMED, "puback-empty"),
    case(4, "40 0001 00", MALFORMED, "puback-311-trailing"),
    case(5, "40 0001 05", PROTOCOL, "puback-invalid-reason"),
    case(5, "62 0001 10", PROTOCOL, "pubrel-invalid-reason"),
    case(5, "70 0001 87", PROTOCOL, "pubcomp-invalid-reason"),
    case(5, "40 0001 00 00 00", MALFORMED, "puback-trailing-after-properties"),
    case(5, "40 0001 00 02 02 00", MALFORMED, "puback-property-not-allowed"),
    # --- PINGREQ / PINGRESP / DISCONNECT / AUTH
    case(4, "c0 00", MALFORMED, "pingreq-body"),
    case(5, "d0 00", MALFORMED, "pingresp-body"),
    case(4, "e0 00", MALFORMED, "disconnect-311-body"),
    case(5, "e0 01", PROTOCOL, "disconnect-invalid-reason"),
    case(5, "e0 00 00 00", MALFORMED, "disconnect-trailing"),
    case(5, "e0 00 05", MALFORMED, "disconnect-property-length-past-end"),
    case(5, "f0 01", PROTOCOL, "auth-invalid-reason"),
    case(5, "f0 18 02 23 00", MALFORMED, "auth-property-not-allowed"),
    # --- CONNECT
    case(4, "10 0004 4d515454 06 02 003c 0000", UNSUPPORTED, "connect-level-6"),
    case(4, "10 0004 4d515454 03 02 003c 0000", UNSUPPORTED, "connect-mqtt-level-3"),
    case(4, "10 0006 4d5149736470 04 02 003c 0000", UNSUPPORTED, "connect-mqisdp-4"),
    case(4, "10 0004 4d515454 84 02 003c 0000", UNSUPPORTED, "connect-bridge-bit"),
    case(4, "10 0004 4d515458 04 02 003c 0000", PROTOCOL, "connect-unknown-name"),
    case(4, "10 0004 6d717474 04 02 003c 0000", PROTOCOL, "connect-lowercase-name"),
    case(4, "10 " + V4_CONNECT_HEAD + " 03 003c 0000", MALFORMED, "connect-reserved-flag"),
    case(4, "10 " + V4_CONNECT_HEAD + " 1e 003c 0000", MALFORMED, "connect-will-qos-3"),
    case(4, "10 " + V4_CONNECT_HEAD + " 0a 003c 0000", MALFORMED, "connect-qos-without-will"),
    case(4, "10 " + V4_CONNECT_HEAD + " 22 003c 0000", MALFORMED, "connect-retain-no-will"),
    case(
        4,
        "10 " + V4_CONNECT_HEAD + " 42 003c 0000 0002 7077",
        MALFORMED,
        "connect-311-password-without-user-name",
    ),
    case(4, "10 " + V4_CONNECT_HEAD + " 02 003c 0000 00", MALFORMED, "connect-trailing"),
    case(4, "10 " + V4_CONNECT_HEAD + " 02 003c 0005", MALFORMED, "connect-truncated-id"),
    case(4, "10 " + V4_CONNECT_HEAD + " 02 003c", MALFORMED, "connect-missing-id"),
    case(4, "10 " + V4_CONNECT_HEAD + " 02", MALFORMED, "connect-missing-keep-alive"),
    case(4, "10 0004 4d515454", MALFORMED, "connect-missing-level"),
    case(4, "10 " + V4_CONNECT_HEAD + " 02 003c 0001 00", MALFORMED, "connect-u0000-id"),
    case(4, "10 " + V4_CONNECT_HEAD + " 06 003c 0000 0001 74", MALFORMED, "connect-no-will-msg"),
    case(4, "10 " + V4_CONNECT_HEAD + " 82 003c 0000", MALFORMED, "connect-missing-user"),
    case(
        5,
        "10 " + V5_CONNECT_HEAD + " 02 003c 03 21 0000 0000",
        PROTOCOL,
        "connect-receive-maximum-0",
    ),
    case(
        5,
        "10 " + V5_CONNECT_HEAD + " 02 003c 05 27 00000000 0000",
        PROTOCOL,
        "connect-maximum-packet-size-0",
    ),
    case(
        5,
        "10 " + V5_CONNECT_HEAD + " 02 003c 02 17 02 0000",
        PROTOCOL,
        "connect-request-problem-information-2",
    ),
    case(
        5,
        "10 " + V5_CONNECT_HEAD + " 02 003c 0a 11 00000001 11 00000002 0000",
        PROTOCOL,
        "connect-duplicate-session-expiry",
    ),
    case(
        5,
        "10 " + V5_CONNECT_HEAD + " 02 003c 02 23 0001 0000",
        MALFORMED,
        "connect-topic-alias-not-allowed",
    ),
    case(
        5,
        "10 " + V5_CONNECT_HEAD + " 06 003c 00 0000 03 23 0001 0001 74 0000",
        MALFORMED,
        "will-properties-topic-alias",
    ),
    case(
        5,
        "10 " + V5_CONNECT_HEAD + " 06 003c 00 0000 02 01 02 0001 74 0000",
        PROTOCOL,
        "will-payload-format-2",
    ),
    # --- CONNACK
    case(4, "20 02 00", MALFORMED, "connack-reserved-flags"),
    case(4, "20 00 06", PROTOCOL, "connack-311-return-code-6"),
    case(4, "20 01 05", PROTOCOL, "connack-session-present-on-failure"),
    case(4, "20 00 00 00", MALFORMED, "connack-311-trailing"),
    case(4, "20 00", MALFORMED, "connack-truncated"),
    case(5, "20 00 00", MALFORMED, "connack-v5-missing-properties"),
    case(5, "20 00 10 00", PROTOCOL, "connack-v5-invalid-reason"),
    case(5, "20 01 87 00", PROTOCOL, "connack-v5-session-present-on-failure"),
    case(5, "20 00 00 02 24 02", PROTOCOL, "connack-maximum-qos-2"),
    case(5, "20 00 00 02 25 07", PROTOCOL, "connack-retain-available-7"),
    case(5, "20 00 00 02 28 02", PROTOCOL, "connack-wildcard-available-2"),
    case(5, "20 00 00 02 29 02", PROTOCOL, "connack-subid-available-2"),
    case(5, "20 00 00 02 2a 02", PROTOCOL, "connack-shared-available-2"),
    case(5, "20 00 00 02 19 01", MALFORMED, "connack-request-response-not-allowed"),
    case(5, "20 00 00 01 7f", MALFORMED, "connack-unknown-property"),
    case(5, "20 00 00 02 80 01", MALFORMED, "connack-two-byte-property-id"),
    case(5, "20 00 00 00 00", MALFORMED, "connack-trailing"),
    # --- SUBSCRIBE
    case(4, "82 0001", PROTOCOL, "subscribe-311-no-filters"),
    case(5, "82 0001 00", PROTOCOL, "subscribe-v5-no-filters"),
    case(4, "82 0000 0001 74 00", MALFORMED, "subscribe-packet-id-0"),
    case(4, "82 0001 0001 74", MALFORMED, "subscribe-missing-options"),
    case(4, "82 0001 0001 74 03", MALFORMED, "subscribe-qos-3"),
    case(4, "82 0001 0001 74 04", MALFORMED, "subscribe-311-upper-bits"),
    case(4, "82 0001 0001 74 40", MALFORMED, "subscribe-311-bit-6"),
    case(5, "82 0001 00 0001 74 40", MALFORMED, "subscribe-v5-reserved-bit-6"),
    case(5, "82 0001 00 0001 74 80", MALFORMED, "subscribe-v5-reserved-bit-7"),
    case(5, "82 0001 00 0001 74 03", MALFORMED, "subscribe-v5-qos-3"),
    case(5, "82 0001 00 0001 74 30", PROTOCOL, "subscribe-retain-handling-3"),
    case(5, "82 0001 02 0b 00 0001 74 00", PROTOCOL, "subscribe-subscription-id-0"),
    case(5, "82 0001 04 0b 01 0b 02 0001 74 00", PROTOCOL, "subscribe-two-subscription-ids"),
    case(5, "82 0001 03 23 0001 0001 74 00", MALFORMED, "subscribe-topic-alias"),
    case(4, "82 0001 0001 74 00 00", MALFORMED, "subscribe-trailing-half-filter"),
    # --- SUBACK / UNSUBSCRIBE / UNSUBACK
    case(4, "90 0001", PROTOCOL, "suback-no-codes"),
    case(4, "90 0001 03", PROTOCOL, "suback-311-return-code-3"),
    case(4, "90 0001 87", PROTOCOL, "suback-311-v5-only-code"),
    case(5, "90 0001 00 03", PROTOCOL, "suback-v5-invalid-code"),
    case(4, "a2 0001", PROTOCOL, "unsubscribe-no-filters"),
    case(5, "a2 0001 00", PROTOCOL, "unsubscribe-v5-no-filters"),
    case(4, "a2 0001 0005", MALFORMED, "unsubscribe-truncated-filter"),
    case(4, "a2 0000 0001 74", MALFORMED, "unsubscribe-packet-id-0"),
    case(4, "b0 0001 00", MALFORMED, "unsuback-311-trailing"),
    case(5, "b0 0001 00", PROTOCOL, "unsuback-v5-no-codes"),
    case(5, "b0 0001 00 02", PROTOCOL, "unsuback-v5-invalid-code"),
    # --- properties in PUBLISH
    case(5, "30 0001 74 0a 02 00000001 02 00000002", PROTOCOL, "duplicate-message-expiry"),
    case(5, "30 0001 74 04 01 00 01 01", PROTOCOL, "duplicate-payload-format"),
    case(5, "30 0001 74 06 23 0001 23 0002", PROTOCOL, "duplicate-topic-alias"),
    case(5, "30 0001 74 08 03 0001 61 03 0001 62", PROTOCOL, "duplicate-content-type"),
    case(5, "30 0001 74 05 11 00000001", MALFORMED, "publish-session-expiry"),
    case(5, "30 0001 74 02 7f 00", MALFORMED, "publish-unknown-property"),
    case(5, "30 0001 74 02 00 00", MALFORMED, "publish-property-id-0"),
    case(5, "30 0001 74 02 0b 00", PROTOCOL, "publish-subscription-id-0"),
    case(5, "30 0001 74 03 0b 80 00", MALFORMED, "publish-subscription-id-non-minimal"),
    case(5, "30 0001 74 03 23 0000", PROTOCOL, "publish-topic-alias-0"),
    case(5, "30 0001 74 02 01 02", PROTOCOL, "publish-payload-format-2"),
    case(5, "30 0001 74 06 26 0001 ff 0000", MALFORMED, "user-property-bad-utf8"),
    case(5, "30 0001 74 06 26 0000 0001 00", MALFORMED, "user-property-u0000"),
    case(5, "30 0001 74 04 26 0000 00", MALFORMED, "user-property-truncated-value"),
    case(5, "30 0001 74 04 09 0005 00", MALFORMED, "correlation-data-truncated"),
]


@pytest.mark.parametrize(("version", "frame", "reason"), CORPUS)
def test_hostile_frame_earns_its_reason_code(version: int, frame: str, reason: int) -> None:
    data = bytes.fromhex(frame)
    with pytest.raises(ProtocolError) as info:
        codec.decode(data[0], data[1:], version)
    assert info.value.reason == reason, info.value.message
    if reason == MALFORMED:
        assert isinstance(info.value, MalformedPacket)


def test_every_truncation_of_a_rich_packet_is_malformed() -> None:
    """Cut a v5 CONNECT with will and properties short at every byte."""
    frame = bytes.fromhex(
        "10 2b 0004 4d515454 05 ee 000a"
        "05 11 0000003c"  # session expiry 60
        "0002 6964"  # client id
        "05 18 00000005"  # will delay 5
        "0001 74 0002 6279"  # will topic and payload
        "0004 75736572 0002 7077"  # user name, password
    )
    length, offset = codec.decode_variable_byte_int(frame, 1)
    body = frame[offset:]
    assert len(body) == length
    codec.decode(frame[0], body, 5)  # whole: fine
    for cut in range(len(body)):
        with pytest.raises(MalformedPacket):
            codec.decode(frame[0], body[:cut], 5)
