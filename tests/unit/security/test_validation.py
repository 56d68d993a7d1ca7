"""Unit tests of ``security/validation.py``: topic bounds, message size, payload format."""

from __future__ import annotations

import pytest

from bastion.config.schema import MqttSettings
from bastion.mqtt.packets import NO_PROPERTIES, Properties
from bastion.mqtt.reason_codes import ReasonCode
from bastion.security.validation import MessageRules, Rule, is_utf8, utf8_size

UTF8 = Properties(payload_format_indicator=1)


def rules(length: int = 16, levels: int = 4, size: int = 8) -> MessageRules:
    return MessageRules(max_topic_length=length, max_topic_levels=levels, max_message_size=size)


def test_defaults_come_from_the_settings() -> None:
    compiled = MessageRules.from_settings(MqttSettings())
    assert (compiled.max_topic_length, compiled.max_topic_levels) == (1024, 32)
    assert compiled.max_message_size == 256 * 1024


@pytest.mark.parametrize(
    ("payload", "valid"),
    [
        (b"", True),
        (b"plain", True),
        ("ß😀".encode(), True),
        (b"\x00", True),  # U+0000 is well-formed UTF-8; only strings forbid it
        (b"\xc0\xaf", False),  # overlong
        (b"\xed\xa0\x80", False),  # surrogate
        (b"\xf4\x90\x80\x80", False),  # above U+10FFFF
        (b"\xe2\x82", False),  # truncated
        (b"\xff", False),
    ],
)
def test_is_utf8(payload: bytes, valid: bool) -> None:
    assert is_utf8(payload) is valid


def test_utf8_size() -> None:
    assert utf8_size("abc") == 3
    assert utf8_size("é😀") == 6


def test_topic_name_bounds() -> None:
    r = rules(length=8, levels=2)
    assert r.check_topic_name("a/b") is None
    too_deep = r.check_topic_name("a/b/c")
    assert too_deep is not None
    assert (too_deep.reason, too_deep.rule) == (ReasonCode.TOPIC_NAME_INVALID, Rule.TOPIC_LIMIT)
    assert "levels" in too_deep.message
    too_long = r.check_topic_name("123456789")
    assert too_long is not None
    assert "bytes" in too_long.message
    assert r.check_topic_name("éééé") is None  # 8 bytes
    assert r.check_topic_name("ééééé") is not None


def test_topic_filter_bounds() -> None:
    r = rules(length=20, levels=2)
    assert r.check_topic_filter("$share/group/a/#") is None  # levels after the share name
    deep = r.check_topic_filter("$share/group/a/b/c")
    assert deep is not None
    assert (deep.reason, deep.rule) == (ReasonCode.TOPIC_FILTER_INVALID, Rule.FILTER_LIMIT)
    assert r.check_topic_filter("$share/a-long-group/a") is not None  # 21 bytes in all


def test_payload_rules() -> None:
    r = rules(size=8)
    assert r.check_payload(b"x" * 8, NO_PROPERTIES) is None
    big = r.check_payload(b"x" * 9, UTF8)
    assert big is not None
    assert (big.reason, big.rule) == (ReasonCode.QUOTA_EXCEEDED, Rule.MESSAGE_SIZE)
    bad = r.check_payload(b"\xff", UTF8)
    assert bad is not None
    assert (bad.reason, bad.rule) == (ReasonCode.PAYLOAD_FORMAT_INVALID, Rule.PAYLOAD_FORMAT)
    assert r.check_payload(b"\xff", Properties(payload_format_indicator=0)) is None
    assert rules(size=0).check_payload(b"x" * 10_000, NO_PROPERTIES) is None


def test_check_message_reports_the_topic_first() -> None:
    rejection = rules(levels=1).check_message("a/b", b"\xff", UTF8)
    assert rejection is not None
    assert rejection.rule is Rule.TOPIC_LIMIT


def test_topic_limit_checks_are_remembered_and_stay_right() -> None:
    rules = MessageRules(max_topic_length=20, max_topic_levels=3, max_message_size=0)
    for _ in range(2):  # the second round answers from the remembered topic names
        assert rules.check_topic_name("a/b/c") is None
        rejection = rules.check_topic_name("a/b/c/d")
        assert rejection is not None and rejection.reason == ReasonCode.TOPIC_NAME_INVALID
        assert rules.check_topic_name("x" * 21) is not None
    for i in range(5000):  # beyond what is kept: the set starts over, answers do not change
        assert rules.check_topic_name(f"t/{i}") is None
    assert rules.check_topic_name("a/b/c/d") is not None
