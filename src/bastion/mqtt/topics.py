"""MQTT topic names and filters: validation, ``$share/`` parsing and the reference matcher.

Pure, stdlib-only; ``security/`` validates input with it, and the tries in ``broker/``
(subscriptions.py, retained.py) implement ``topic_matches`` and are tested against it.
"""

from __future__ import annotations

from bastion.errors import ProtocolError

__all__ = [
    "MAX_TOPIC_BYTES",
    "SHARE_PREFIX",
    "TOPIC_FILTER_INVALID",
    "TOPIC_NAME_INVALID",
    "is_wildcard",
    "parse_shared",
    "topic_matches",
    "validate_topic_filter",
    "validate_topic_name",
]

TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90

MAX_TOPIC_BYTES = 65535
"""A UTF-8 encoded string on the wire is at most 65535 bytes long."""

SHARE_PREFIX = "$share/"


def _check_text(text: str, what: str, reason: int) -> None:
    """Reject empty, NUL-carrying, unencodable or over-long topic strings."""
    if not text:
        raise ProtocolError(f"{what} is empty", reason=reason)
    if "\x00" in text:
        raise ProtocolError(f"{what} contains U+0000", reason=reason)
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise ProtocolError(f"{what} is not valid UTF-8", reason=reason) from None
    if size > MAX_TOPIC_BYTES:
        raise ProtocolError(f"{what} is longer than {MAX_TOPIC_BYTES} bytes", reason=reason)


def validate_topic_name(topic: str) -> None:
    """Raise ``ProtocolError`` (0x90 Topic Name invalid) unless ``topic`` may be published to."""
    if "+" in topic or "#" in topic:
        raise ProtocolError("topic name contains a wildcard", reason=TOPIC_NAME_INVALID)
    _check_text(topic, "topic name", TOPIC_NAME_INVALID)


def _check_filter_levels(topic_filter: str) -> None:
    """Check wildcard placement: '#' alone in the last level, '+' alone in its level."""
    if "+" not in topic_filter and "#" not in topic_filter:
        return
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != last):
            raise ProtocolError(
                "'#' must be alone in the last level of a topic filter",
                reason=TOPIC_FILTER_INVALID,
            )
        if "+" in level and level != "+":
            raise ProtocolError(
                "'+' must occupy a whole level of a topic filter", reason=TOPIC_FILTER_INVALID
            )


def validate_topic_filter(topic_filter: str) -> None:
    """Raise ``ProtocolError`` (0x8F Topic Filter invalid) unless ``topic_filter`` is valid.

    Shared subscriptions (``$share/{ShareName}/{filter}``) need a non-empty ShareName
    without '/', '+' or '#', followed by a non-empty valid filter.
    """
    _check_text(topic_filter, "topic filter", TOPIC_FILTER_INVALID)
    if topic_filter.startswith(SHARE_PREFIX):
        name, slash, rest = topic_filter[len(SHARE_PREFIX) :].partition("/")
        if not name:
            raise ProtocolError(
                "shared subscription has an empty ShareName", reason=TOPIC_FILTER_INVALID
            )
        if "+" in name or "#" in name:
            raise ProtocolError("ShareName contains a wildcard", reason=TOPIC_FILTER_INVALID)
        if not slash or not rest:
            raise ProtocolError(
                "shared subscription has no topic filter", reason=TOPIC_FILTER_INVALID
            )
        topic_filter = rest
    _check_filter_levels(topic_filter)


def parse_shared(topic_filter: str) -> tuple[str | None, str]:
    """Split a validated filter into (ShareName, filter); ShareName is None if not shared.

    ``"$share/g/a/b"`` gives ``("g", "a/b")``; ``"a/b"`` gives ``(None, "a/b")``.
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None, topic_filter
    name, _, rest = topic_filter[len(SHARE_PREFIX) :].partition("/")
    return name, rest


def is_wildcard(topic_filter: str) -> bool:
    """True if the filter contains '+' or '#' (a ShareName never does once validated)."""
    return "+" in topic_filter or "#" in topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    """The reference matcher: does the (validated) filter match the (validated) topic name?

    '+' matches exactly one level, possibly empty; '#' matches the parent level and any
    number of levels below it; a topic starting with '$' is not matched by a filter whose
    first level is a wildcard. A ``$share/{ShareName}/`` prefix is ignored: the filter
    after it decides.
    """
    _, topic_filter = parse_shared(topic_filter)
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)
