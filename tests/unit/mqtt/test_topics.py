"""Unit tests for ``bastion.mqtt.topics``: validation, ``$share/`` parsing, matching.

Examples come from the MQTT 5.0 specification (section 4.7 and 4.8.2) where it has them.
"""

from __future__ import annotations

import pytest

from bastion.errors import ProtocolError
from bastion.mqtt.topics import (
    MAX_TOPIC_BYTES,
    is_wildcard,
    parse_shared,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

# --- topic names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "a",
        "/",
        "//",
        "/finance",
        "sport/tennis/player1",
        "Accounts payable",
        "$SYS/broker/clients",
        "temp/sensor1",
        "ünïcödé/主题",
        "a" * MAX_TOPIC_BYTES,
    ],
)
def test_valid_topic_names(topic: str) -> None:
    validate_topic_name(topic)


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "+",
        "#",
        "sport/+/player1",
        "sport/tennis/#",
        "sport+",
        "a#b",
        "a\x00b",
        "\x00",
        "a" * (MAX_TOPIC_BYTES + 1),
        "é" * (MAX_TOPIC_BYTES // 2 + 1),  # 2 bytes each: one byte too many
        "bad\ud800surrogate",
    ],
)
def test_invalid_topic_names(topic: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_topic_name(topic)
    assert info.value.reason == 0x90


def test_topic_name_length_counts_utf8_bytes() -> None:
    validate_topic_name("é" * (MAX_TOPIC_BYTES // 2) + "a")  # exactly 65535 bytes
    with pytest.raises(ProtocolError):
        validate_topic_name("é" * (MAX_TOPIC_BYTES // 2) + "ab")


# --- topic filters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic_filter",
    [
        "#",
        "+",
        "/",
        "sport/tennis/#",
        "sport/#",
        "+/tennis/#",
        "sport/+/player1",
        "sport/tennis/+",
        "+/+",
        "/+",
        "+/",
        "//#",
        "$SYS/#",
        "$SYS/monitor/+",
        "$share",
        "$share/consumer1/sport/tennis/+",
        "$share/consumer2/sport/tennis/+",
        "$share/consumer1//finance",
        "$share/g/#",
        "$share/g/+",
        "$share/$g/a",
        "$sharefoo/bar",
        "a" * MAX_TOPIC_BYTES,
    ],
)
def test_valid_topic_filters(topic_filter: str) -> None:
    validate_topic_filter(topic_filter)


@pytest.mark.parametrize(
    "topic_filter",
    [
        "",
        "sport/tennis#",
        "sport/tennis/#/ranking",
        "#/a",
        "##",
        "sport+",
        "sport/+player/x",
        "++",
        "a/+b",
        "a\x00b",
        "a" * (MAX_TOPIC_BYTES + 1),
        "bad\udfffsurrogate",
        "$share/",
        "$share/group",
        "$share/group/",
        "$share//x",
        "$share/gr+oup/x",
        "$share/#/x",
        "$share/+/x",
        "$share/g/a#",
        "$share/g/a/#/b",
        "$share/g/a+",
    ],
)
def test_invalid_topic_filters(topic_filter: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_topic_filter(topic_filter)
    assert info.value.reason == 0x8F


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("$share/g/a/b", ("g", "a/b")),
        ("$share/consumer1//finance", ("consumer1", "/finance")),
        ("$share/g/#", ("g", "#")),
        ("a/b", (None, "a/b")),
        ("#", (None, "#")),
        ("$SYS/#", (None, "$SYS/#")),
        ("$share", (None, "$share")),
    ],
)
def test_parse_shared(topic_filter: str, expected: tuple[str | None, str]) -> None:
    assert parse_shared(topic_filter) == expected


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [("a/b", False), ("a/+", True), ("#", True), ("$share/g/a", False), ("$share/g/+", True)],
)
def test_is_wildcard(topic_filter: str, expected: bool) -> None:
    assert is_wildcard(topic_filter) is expected


# --- matching ----------------------------------------------------------------------------

MATCHES = [
    # '#' (spec 4.7.1.2), including the parent level
    ("sport/tennis/player1/#", "sport/tennis/player1"),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking"),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon"),
    ("sport/#", "sport"),
    ("#", "sport"),
    ("#", "/"),
    ("#", "a/b/c"),
    # '+' (spec 4.7.1.3): one level, empty ones included
    ("sport/tennis/+", "sport/tennis/player1"),
    ("sport/tennis/+", "sport/tennis/player2"),
    ("sport/+", "sport/"),
    ("+/+", "/finance"),
    ("/+", "/finance"),
    ("+", "x"),
    ("+/tennis/#", "sport/tennis/player1/ranking"),
    ("sport/+/player1", "sport/tennis/player1"),
    ("a/+/c", "a//c"),
    ("+/+/+", "//"),
    # '$' topics (spec 4.7.2)
    ("$SYS/#", "$SYS/monitor/Clients"),
    ("$SYS/#", "$SYS"),
    ("$SYS/monitor/+", "$SYS/monitor/Clients"),
    ("$SYS/+/Clients", "$SYS/monitor/Clients"),
    ("a/+", "a/$b"),
    ("a/#", "a/$b/c"),
    # literal
    ("sport/tennis/player1", "sport/tennis/player1"),
    ("/", "/"),
    # shared filters match by their filter part
    ("$share/g/sport/tennis/+", "sport/tennis/player1"),
    ("$share/g/#", "a/b"),
]

NON_MATCHES = [
    ("sport/tennis/+", "sport/tennis/player1/ranking"),
    ("sport/+", "sport"),
    ("+", "/finance"),
    ("+", "a/b"),
    ("sport/tennis/player1/#", "sport/tennis"),
    ("sport/tennis/player1/#", "sport/tennis/player10"),
    ("sport/#", "sports"),
    ("a/+/c", "a/c"),
    ("a/b", "a/b/c"),
    ("a/b/c", "a/b"),
    ("ACCOUNTS", "Accounts"),  # case sensitive
    ("a", "a "),
    ("a", "/a"),
    # '$' topics (spec 4.7.2)
    ("#", "$SYS/monitor/Clients"),
    ("#", "$SYS"),
    ("+/monitor/Clients", "$SYS/monitor/Clients"),
    ("+", "$SYS"),
    ("+/#", "$SYS/x"),
    ("$share/g/#", "$SYS/x"),
    ("$share/g/a", "b"),
]


@pytest.mark.parametrize(("topic_filter", "topic"), MATCHES)
def test_matches(topic_filter: str, topic: str) -> None:
    assert topic_matches(topic_filter, topic)


@pytest.mark.parametrize(("topic_filter", "topic"), NON_MATCHES)
def test_non_matches(topic_filter: str, topic: str) -> None:
    assert not topic_matches(topic_filter, topic)


def test_examples_are_valid() -> None:
    """Every example above is itself well-formed, so the matcher's precondition holds."""
    for topic_filter, topic in MATCHES + NON_MATCHES:
        validate_topic_filter(topic_filter)
        validate_topic_name(topic)
