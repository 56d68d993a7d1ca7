"""Structured logging set-up: structlog to stderr as human console lines or JSON lines.

Called once by the CLI before the runtime starts. Code logs with
``structlog.get_logger("bastion.broker").info("client.connected", client_id=cid)``; records
from the stdlib ``logging`` module (asyncio, libraries) are rendered the same way.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Literal

import structlog
from structlog.typing import EventDict, Processor

__all__ = ["LEVELS", "configure_logging"]

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
"""The level names accepted by ``configure_logging``, lowest first."""


class _StderrLogger:
    """Writes rendered lines to whatever ``sys.stderr`` is at the time of the call.

    Looking ``sys.stderr`` up per line (rather than holding the stream) keeps test runners
    that swap it working. ``name`` is read by ``structlog.stdlib.add_logger_name``.
    """

    _lock = threading.Lock()

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        with self._lock:
            stream = sys.stderr
            stream.write(message + "\n")
            stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = failure = msg
    err = log = msg


def _logger_factory(*args: object) -> _StderrLogger:
    name = args[0] if args and isinstance(args[0], str) else "bastion"
    return _StderrLogger(name)


class _StderrHandler(logging.Handler):
    """Stdlib handler that formats with structlog's ``ProcessorFormatter`` to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            with _StderrLogger._lock:
                stream = sys.stderr
                stream.write(line + "\n")
                stream.flush()
        except Exception:
            self.handleError(record)


_LEADING_KEYS = ("timestamp", "level", "logger", "event")


def _leading_keys_first(_logger: object, _method: str, event_dict: EventDict) -> EventDict:
    """Put timestamp, level, logger and event first in each JSON line, for readers."""
    ordered = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _renderer(fmt: Literal["human", "json"]) -> list[Processor]:
    if fmt == "json":
        return [
            structlog.processors.format_exc_info,
            _leading_keys_first,
            structlog.processors.JSONRenderer(),
        ]
    colors = sys.stderr.isatty() and "NO_COLOR" not in os.environ
    # Plain tracebacks: a rich one would print local variables, which may hold secrets.
    return [
        structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
    ]


def configure_logging(level: str, fmt: Literal["human", "json"]) -> None:
    """Send structlog and stdlib ``logging`` output at ``level`` or above to stderr.

    ``level`` is one of ``LEVELS``; ``fmt`` is ``"human"`` (console renderer, coloured only
    on a terminal) or ``"json"`` (one object per line: timestamp, level, logger, event, ...).
    Calling it again replaces the previous set-up.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    if fmt not in ("human", "json"):
        raise ValueError(f"unknown log format {fmt!r}; expected 'human' or 'json'")
    threshold = LEVELS[level]
    shared: Sequence[Processor] = (
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    )
    renderer = _renderer(fmt)
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=True,
    )
    _route_stdlib(threshold, shared, renderer)


def _route_stdlib(threshold: int, shared: Sequence[Processor], renderer: list[Processor]) -> None:
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    handler = _StderrHandler(threshold)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold)
