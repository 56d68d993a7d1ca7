"""Content rules every application message and subscription must pass, beyond the wire format.

``mqtt/`` already rejects what the spec forbids (invalid UTF-8, wildcards in topic names);
``MessageRules`` adds the server's own bounds (topic length and depth, message size) and the
Payload Format Indicator check. The broker core asks it for PUBLISH, wills and SUBSCRIBE.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bastion.config.schema import MqttSettings
from bastion.mqtt.packets import Properties
from bastion.mqtt.reason_codes import ReasonCode
from bastion.mqtt.topics import parse_shared

_MAX_UTF8_BYTES_PER_CHAR = 4


class Rule(StrEnum):
    """Which rule refused a message or filter."""

    TOPIC_LIMIT = "topic_limit"  # topic name longer or deeper than allowed
    FILTER_LIMIT = "filter_limit"  # topic filter longer or deeper than allowed
    MESSAGE_SIZE = "message_size"  # payload over max_message_size
    PAYLOAD_FORMAT = "payload_format"  # format indicator 1, payload not UTF-8


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message or filter is refused: the MQTT 5 reason code, the rule, a text."""

    reason: int
    rule: Rule
    message: str


def utf8_size(text: str) -> int:
    """Length of ``text`` in UTF-8 bytes (``text`` came from the decoder: encodable)."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def is_utf8(payload: bytes) -> bool:
    """True if ``payload`` is well-formed UTF-8 (RFC 3629: no overlongs, no surrogates).

    MQTT 5 §3.3.2.3.2 asks only for well-formed UTF-8 in a payload marked as character
    data; U+0000 is allowed there, unlike in UTF-8 Encoded Strings (§1.5.4).
    """
    if payload.isascii():
        return True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_PASSED_KEPT = 4096  # topic names remembered as within the limits (the set starts over)


class MessageRules:
    """The server's bounds on topics and messages, compiled once from the settings."""

    __slots__ = ("_passed", "max_message_size", "max_topic_length", "max_topic_levels")

    def __init__(
        self, *, max_topic_length: int, max_topic_levels: int, max_message_size: int
    ) -> None:
        self.max_topic_length = max_topic_length
        self.max_topic_levels = max_topic_levels
        self.max_message_size = max_message_size  # 0: no limit beyond the packet size
        self._passed: set[str] = set()  # topic names known to be within the limits

    @classmethod
    def from_settings(cls, settings: MqttSettings) -> MessageRules:
        return cls(
            max_topic_length=settings.max_topic_length,
            max_topic_levels=settings.max_topic_levels,
            max_message_size=settings.max_message_size,
        )

    def _topic_problem(self, topic: str, levels_of: str) -> str | None:
        """What is wrong with the length of ``topic`` or the depth of ``levels_of``."""
        limit = self.max_topic_length
        chars = len(topic)
        if chars > limit or (chars * _MAX_UTF8_BYTES_PER_CHAR > limit and utf8_size(topic) > limit):
            return f"longer than {limit} bytes"
        if levels_of.count("/") >= self.max_topic_levels:
            return f"more than {self.max_topic_levels} levels"
        return None

    def check_topic_name(self, topic: str) -> Rejection | None:
        """Refuse a topic name over the length or level limit (0x90 Topic Name invalid)."""
        passed = self._passed
        if topic in passed:
            return None
        problem = self._topic_problem(topic, topic)
        if problem is None:
            if len(passed) >= _PASSED_KEPT:
                passed.clear()
            passed.add(topic)
            return None
        return Rejection(ReasonCode.TOPIC_NAME_INVALID, Rule.TOPIC_LIMIT, f"topic name {problem}")

    def check_topic_filter(self, topic_filter: str) -> Rejection | None:
        """Refuse a (valid) filter over the limits (0x8F Topic Filter invalid).

        The length counts the whole filter, ``$share/{ShareName}/`` included; the levels
        count only the filter after it.
        """
        problem = self._topic_problem(topic_filter, parse_shared(topic_filter)[1])
        if problem is None:
            return None
        return Rejection(
            ReasonCode.TOPIC_FILTER_INVALID,
            Rule.FILTER_LIMIT,
            f"topic filter {problem}",
        )

    def check_payload(self, payload: bytes, properties: Properties) -> Rejection | None:
        """Refuse a payload over ``max_message_size`` (0x97) or not what its format says (0x99)."""
        limit = self.max_message_size
        if limit and len(payload) > limit:
            return Rejection(
                ReasonCode.QUOTA_EXCEEDED,
                Rule.MESSAGE_SIZE,
                f"payload larger than {limit} bytes",
            )
        if properties.payload_format_indicator == 1 and not is_utf8(payload):
            return Rejection(
                ReasonCode.PAYLOAD_FORMAT_INVALID,
                Rule.PAYLOAD_FORMAT,
                "payload format indicator is 1 but the payload is not UTF-8",
            )
        return None

    def check_message(self, topic: str, payload: bytes, properties: Properties) -> Rejection | None:
        """Every rule an application message (PUBLISH or will) must pass, topic first."""
        return self.check_topic_name(topic) or self.check_payload(payload, properties)


__all__ = ["MessageRules", "Rejection", "Rule", "is_utf8", "utf8_size"]
