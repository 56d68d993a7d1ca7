"""Rendering logged messages for people and scripts: table, JSON, JSON lines and CSV.

``cli/logger.py`` (query, export) writes what ``logstore.LogStore`` opened through these;
every writer streams (one message at a time) except the table, which sizes its columns.
A payload is shown as its JSON value when it is JSON, as text when it is UTF-8, else base64.
"""

from __future__ import annotations

import base64
import csv
import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import Literal, TextIO

from bastion.storage.logstore import StoredMessage

__all__ = [
    "CSV_HEADER",
    "OutputFormat",
    "PayloadEncoding",
    "decode_payload",
    "format_ts",
    "message_object",
    "write_csv",
    "write_json_array",
    "write_jsonl",
    "write_table",
]

OutputFormat = Literal["table", "json", "jsonl", "csv"]
PayloadEncoding = Literal["json", "text", "base64"]

CSV_HEADER = (
    "ts",
    "topic",
    "qos",
    "retain",
    "payload",
    "payload_encoding",
    "content_type",
    "user_properties",
)
TABLE_PAYLOAD_WIDTH = 100
_BINARY = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}


def format_ts(message: StoredMessage) -> str:
    """RFC 3339 in UTC with microseconds: ``2026-05-01T12:00:00.250000Z``."""
    return message.received_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def decode_payload(payload: bytes) -> tuple[PayloadEncoding, object]:
    """``("json", value)`` for a JSON document, ``("text", str)`` for other UTF-8 text
    (control characters other than tab and line breaks make it binary), ``("base64", str)``
    for anything else."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or _BINARY.search(text):
        return "base64", base64.b64encode(payload).decode("ascii")
    if text.strip():
        try:
            return "json", json.loads(text, parse_constant=_no_constants)
        except ValueError:
            pass
    return "text", text


def message_object(message: StoredMessage) -> dict[str, object]:
    """A message as ``{topic, ts, qos, retain, payload}``; binary payloads add
    ``"payload_encoding": "base64"``; MQTT 5 ``content_type``/``user_properties`` if set."""
    encoding, value = decode_payload(message.payload)
    document: dict[str, object] = {
        "topic": message.topic,
        "ts": format_ts(message),
        "qos": message.qos,
        "retain": message.retain,
        "payload": value,
    }
    if encoding == "base64":
        document["payload_encoding"] = "base64"
    if message.content_type is not None:
        document["content_type"] = message.content_type
    if message.user_properties:
        document["user_properties"] = [list(pair) for pair in message.user_properties]
    return document


def _dumps(document: object) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def write_jsonl(messages: Iterable[StoredMessage], out: TextIO) -> int:
    """One JSON object per line (``message_object``); returns how many."""
    count = 0
    for message in messages:
        out.write(_dumps(message_object(message)) + "\n")
        count += 1
    return count


def write_json_array(messages: Iterable[StoredMessage], out: TextIO) -> int:
    """A JSON array of ``message_object``s, one per line; returns how many."""
    count = 0
    for message in messages:
        out.write(("[\n" if count == 0 else ",\n") + _dumps(message_object(message)))
        count += 1
    out.write("[]\n" if count == 0 else "\n]\n")
    return count


def _payload_text(message: StoredMessage) -> tuple[PayloadEncoding, str]:
    encoding, value = decode_payload(message.payload)
    if encoding == "json":
        return encoding, _dumps(value)
    return encoding, str(value)


def write_csv(messages: Iterable[StoredMessage], out: TextIO) -> int:
    """CSV with the ``CSV_HEADER`` row; JSON payloads compact, binary ones base64."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    count = 0
    for message in messages:
        encoding, payload = _payload_text(message)
        user = _dumps([list(p) for p in message.user_properties]) if message.user_properties else ""
        writer.writerow(
            (
                format_ts(message),
                message.topic,
                message.qos,
                int(message.retain),
                payload,
                encoding,
                message.content_type or "",
                user,
            )
        )
        count += 1
    return count


def _printable(text: str, width: int) -> str:
    shown = text.translate(_CONTROL)
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def write_table(messages: Sequence[StoredMessage], out: TextIO) -> int:
    """Aligned columns for people: time, topic, QoS, retain flag, payload (shortened)."""
    rows = [("RECEIVED (UTC)", "TOPIC", "QOS", "RETAIN", "PAYLOAD")]
    for message in messages:
        encoding, payload = _payload_text(message)
        if encoding == "base64":
            payload = f"<{len(message.payload)} bytes, base64> {payload}"
        rows.append(
            (
                message.received_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                _printable(message.topic, 60),
                str(message.qos),
                "yes" if message.retain else "",
                _printable(payload, TABLE_PAYLOAD_WIDTH),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() + "\n")
    return len(messages)
