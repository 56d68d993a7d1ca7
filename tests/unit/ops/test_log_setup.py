"""Unit tests for ``bastion.ops.logging.configure_logging``: formats, levels, stdlib routing.

Output is read from pytest's captured stderr; structlog and the root logger are restored
after each test.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime

import pytest
import structlog

from bastion.ops.logging import configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line]


def test_json_lines_carry_timestamp_level_logger_event_and_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    structlog.get_logger("bastion.broker").info(
        "client.connected", client_id="c1", peer="127.0.0.1:5000"
    )
    (record,) = json_lines(capsys.readouterr().err)
    assert list(record)[:4] == ["timestamp", "level", "logger", "event"]
    assert record["level"] == "info"
    assert record["logger"] == "bastion.broker"
    assert record["event"] == "client.connected"
    assert record["client_id"] == "c1"
    assert record["peer"] == "127.0.0.1:5000"
    stamp = str(record["timestamp"])
    assert stamp.endswith("Z")
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")).utcoffset() is not None


def test_levels_below_the_threshold_are_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning", "json")
    log = structlog.get_logger("bastion.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [r["event"] for r in json_lines(capsys.readouterr().err)] == ["w", "e"]


def test_debug_level_shows_everything(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("debug", "json")
    structlog.get_logger("bastion.test").debug("d", n=1)
    assert json_lines(capsys.readouterr().err)[0]["level"] == "debug"


def test_stdlib_logging_goes_through_the_same_renderer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    other = logging.getLogger("some.library")
    other.info("hello %s", "world", extra={"peer": "x"})
    other.debug("hidden")
    (record,) = json_lines(capsys.readouterr().err)
    assert record["event"] == "hello world"
    assert record["logger"] == "some.library"
    assert record["level"] == "info"
    assert record["peer"] == "x"
    assert "timestamp" in record


def test_exceptions_are_included_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger("bastion.test").exception("failed")
    (record,) = json_lines(capsys.readouterr().err)
    assert record["level"] == "error"
    assert "RuntimeError: boom" in str(record["exception"])


def test_human_format_without_a_terminal_has_no_colours(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "human")
    structlog.get_logger("bastion.broker").info("client.connected", client_id="c1")
    logging.getLogger("asyncio").warning("loop %s", "slow")
    first, second = capsys.readouterr().err.splitlines()
    assert "\x1b[" not in first + second
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z \[info\s*\] client\.connected", first)
    assert "[bastion.broker]" in first
    assert "client_id=c1" in first
    assert "loop slow" in second
    assert "[asyncio]" in second


def test_reconfiguring_replaces_the_previous_setup(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "human")
    configure_logging("info", "json")
    logging.getLogger("x").warning("once")
    assert len(json_lines(capsys.readouterr().err)) == 1


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "json"), ("info", "xml")])
def test_bad_arguments_are_rejected(level: str, fmt: str) -> None:
    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(level, fmt)  # type: ignore[arg-type]
