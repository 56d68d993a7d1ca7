"""The door-lock actuator's decisions: parse a command, accept or refuse it, say what happened.

Pure: the lock client feeds it (payload, QoS, now) from ``cmd/<device>`` and publishes the
``LockResult`` on ``result/<device>``. The broker ACL on the command topic is the authority on
who may send; the ``user`` allow-list here is defence in depth (the field is self-declared).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from bastion.errors import BastionError
from bastion.services.readings import (
    ReadingError,
    check_device_name,
    format_timestamp,
    load_json_object,
)

__all__ = [
    "COMMAND_QOS",
    "MAX_COMMAND_BYTES",
    "RESULT_QOS",
    "CommandError",
    "DoorLock",
    "LockCommand",
    "LockDecision",
    "LockResult",
    "Outcome",
    "Refusal",
    "command_topic",
    "parse_command",
    "result_topic",
]

COMMAND_QOS = 2  # exactly once: a lost or doubled "unlock" is a physical-security event
RESULT_QOS = 2  # the report of a physical action is delivered exactly once, too
MAX_COMMAND_BYTES = 512
COMMANDS = {"lock": "locked", "unlock": "unlocked"}  # command -> the state it leaves
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}", re.ASCII)
_USER = re.compile(r"[A-Za-z0-9_.@-]{1,64}", re.ASCII)


class Refusal(Enum):
    """Why a command was not executed; the value is what the result payload says."""

    MALFORMED = "malformed"
    UNKNOWN_COMMAND = "unknown_command"
    QOS_TOO_LOW = "qos_too_low"
    USER_NOT_ALLOWED = "user_not_allowed"
    REQUEST_ID_REUSED = "request_id_reused"


class Outcome(Enum):
    """What the lock did with a command."""

    ACCEPTED = "accepted"  # executed now
    DUPLICATE = "duplicate"  # already executed under this request_id; not repeated
    REFUSED = "refused"


class CommandError(BastionError, ValueError):
    """A command payload was refused before any decision; ``refusal`` says why."""

    def __init__(self, message: str, refusal: Refusal = Refusal.MALFORMED) -> None:
        super().__init__(message)
        self.refusal = refusal


@dataclass(frozen=True, slots=True)
class LockCommand:
    """A parsed command: ``{"command": "unlock", "request_id": "r-1", "user": "alice"}``."""

    command: str
    request_id: str
    user: str


def command_topic(device: str) -> str:
    """``cmd/<device>``: where authorised users publish commands (QoS 2)."""
    return f"cmd/{check_device_name(device)}"


def result_topic(device: str) -> str:
    """``result/<device>``: where the lock reports each decision (QoS 2)."""
    return f"result/{check_device_name(device)}"


def _text_field(body: dict[str, object], name: str, pattern: re.Pattern[str]) -> str:
    if name not in body:
        raise CommandError(f"missing field {name!r}")
    value = body[name]
    if not isinstance(value, str):
        raise CommandError(f"wrong type for {name!r}: expected a string")
    if pattern.fullmatch(value) is None:
        raise CommandError(f"bad {name} {value[:64]!r}")
    return value


def parse_command(payload: bytes | bytearray | memoryview) -> LockCommand:
    """A ``LockCommand`` from a JSON payload; ``CommandError`` (only) if it is not one."""
    try:
        body = load_json_object(payload, MAX_COMMAND_BYTES)
    except ReadingError as exc:
        raise CommandError(str(exc)) from None
    request_id = _text_field(body, "request_id", _REQUEST_ID)
    user = _text_field(body, "user", _USER)
    command = body.get("command")
    if not isinstance(command, str) or command not in COMMANDS:
        raise CommandError(f"unknown command {str(command)[:32]!r}", Refusal.UNKNOWN_COMMAND)
    return LockCommand(command, request_id, user)


def _request_id_of(payload: bytes | bytearray | memoryview) -> str | None:
    """The request id of a refused payload if one can be read, to correlate the result."""
    try:
        body = load_json_object(payload, MAX_COMMAND_BYTES)
        return _text_field(body, "request_id", _REQUEST_ID)
    except (ReadingError, CommandError):
        return None


@dataclass(frozen=True, slots=True)
class LockResult:
    """The report for one command, published on ``result/<device>``."""

    device: str
    ts: datetime
    outcome: Outcome
    state: str  # "locked" | "unlocked" after the decision
    request_id: str | None = None
    command: str | None = None
    reason: str | None = None  # a Refusal value (plus detail) when refused

    def to_json(self) -> bytes:
        """Compact JSON; absent optional fields are omitted."""
        body: dict[str, str] = {
            "device": self.device,
            "ts": format_timestamp(self.ts),
            "outcome": self.outcome.value,
            "state": self.state,
        }
        for name, value in (
            ("request_id", self.request_id),
            ("command", self.command),
            ("reason", self.reason),
        ):
            if value is not None:
                body[name] = value
        return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class LockDecision:
    """``execute`` says whether to drive the actuator now; ``result`` is what to publish."""

    execute: bool
    result: LockResult


class DoorLock:
    """The lock's state and command log: accepts ``lock``/``unlock`` at QoS 2 from allowed users.

    Executed commands are remembered by ``request_id`` (the last ``history`` of them), so a
    redelivered or replayed command is answered again but never executed twice.
    """

    __slots__ = ("_allowed", "_device", "_executed", "_history", "_state")

    def __init__(
        self,
        allowed_users: frozenset[str] | set[str],
        device: str = "lock1",
        *,
        history: int = 1024,
    ) -> None:
        if history < 1:
            raise ValueError("history must be >= 1")
        self._device = check_device_name(device)
        self._allowed = frozenset(allowed_users)
        self._history = history
        self._executed: OrderedDict[str, LockCommand] = OrderedDict()
        self._state = "locked"  # fail secure: a fresh lock is locked

    @property
    def state(self) -> str:
        """``"locked"`` or ``"unlocked"``."""
        return self._state

    def _refuse(
        self,
        now: datetime,
        refusal: Refusal,
        detail: str,
        request_id: str | None,
        command: str | None,
    ) -> LockDecision:
        reason = refusal.value if not detail else f"{refusal.value}: {detail}"
        result = LockResult(
            self._device, now, Outcome.REFUSED, self._state, request_id, command, reason
        )
        return LockDecision(False, result)

    def handle(
        self, payload: bytes | bytearray | memoryview, qos: int, now: datetime
    ) -> LockDecision:
        """Decide on one command received with ``qos`` at ``now``; never raises on bad input."""
        try:
            cmd = parse_command(payload)
        except CommandError as exc:
            return self._refuse(now, exc.refusal, str(exc), _request_id_of(payload), None)
        if qos != COMMAND_QOS:
            return self._refuse(
                now, Refusal.QOS_TOO_LOW, f"got QoS {qos}", cmd.request_id, cmd.command
            )
        if cmd.user not in self._allowed:
            return self._refuse(now, Refusal.USER_NOT_ALLOWED, "", cmd.request_id, cmd.command)
        earlier = self._executed.get(cmd.request_id)
        if earlier is not None:
            if earlier != cmd:
                return self._refuse(now, Refusal.REQUEST_ID_REUSED, "", cmd.request_id, cmd.command)
            replay = LockResult(
                self._device, now, Outcome.DUPLICATE, self._state, cmd.request_id, cmd.command
            )
            return LockDecision(False, replay)
        self._state = COMMANDS[cmd.command]
        result = LockResult(
            self._device, now, Outcome.ACCEPTED, self._state, cmd.request_id, cmd.command
        )
        self._executed[cmd.request_id] = cmd
        if len(self._executed) > self._history:
            self._executed.popitem(last=False)
        return LockDecision(True, result)
