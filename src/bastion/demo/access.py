"""Who is who in the demo: its clients, what each may do, and the ACL file that says so.

Pure data plus one renderer; ``statedir.py`` writes the credentials and the ACL for these
clients, ``run.py`` starts the ones that are services. Deny by default: nothing is granted
that is not listed here, and no client may read ``$SYS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

__all__ = [
    "CLIENTS",
    "DOOR",
    "KILLED_SENSOR",
    "OPERATOR",
    "SENSORS",
    "VIEWER",
    "DemoClient",
    "Grant",
    "Sensor",
    "acl_text",
    "client_names",
]

Grant = tuple[Literal["read", "write"], str]
"""One ACL grant: the access and the topic (filter) it applies to."""


@dataclass(frozen=True, slots=True)
class DemoClient:
    """One credential of the demo: its username (also its client id) and its grants."""

    name: str
    job: str  # one line for people: what the client does
    grants: tuple[Grant, ...]


@dataclass(frozen=True, slots=True)
class Sensor:
    """A simulated sensor the demo runs (``bastion sensor NAME``) and the topic it feeds."""

    name: str
    topic: str


SENSORS: Final = (
    Sensor("sensor1", "temp/sensor1"),
    Sensor("sensor2", "humid/sensor2"),
    Sensor("sensor3", "motion/sensor3"),
)
KILLED_SENSOR: Final = "sensor2"  # SIGKILLed at two thirds of the run: its will must fire
DOOR: Final = "door1"
OPERATOR: Final = "operator"
VIEWER: Final = "viewer"

CLIENTS: Final[tuple[DemoClient, ...]] = (
    *(
        DemoClient(
            sensor.name,
            f"publishes {sensor.topic} (QoS 0) and its status (retained, will = offline)",
            (("write", sensor.topic), ("write", f"status/{sensor.name}")),
        )
        for sensor in SENSORS
    ),
    DemoClient(
        DOOR,
        "door lock: takes QoS 2 commands on cmd/door1, reports on result/door1",
        (("read", "cmd/door1"), ("write", "result/door1"), ("write", "status/door1")),
    ),
    DemoClient(
        "alerts",
        "alert service: reads motion, status and readings, raises alerts/<kind>/<device>",
        (
            ("read", "motion/#"),
            ("read", "status/#"),
            ("read", "temp/#"),
            ("read", "humid/#"),
            ("write", "alerts/#"),
        ),
    ),
    DemoClient("logger", "data logger: reads everything, never publishes", (("read", "#"),)),
    DemoClient("dashboard", "dashboard: reads temperatures only", (("read", "temp/#"),)),
    DemoClient(
        VIEWER,
        "read-only view of everything (the demo's monitor, your mosquitto_sub)",
        (("read", "#"),),
    ),
    DemoClient(
        OPERATOR,
        "operator: may send door commands (QoS 2) and read their results",
        (("write", "cmd/door1"), ("read", "result/door1")),
    ),
)

_BY_NAME: Final[Mapping[str, DemoClient]] = MappingProxyType({c.name: c for c in CLIENTS})


def client_names() -> tuple[str, ...]:
    """Every client's name, in the order of ``CLIENTS``."""
    return tuple(_BY_NAME)


def acl_text() -> str:
    """The ACL file (Mosquitto ``acl_file`` syntax): one ``user`` block per client."""
    lines = [
        "# Written by `bastion demo` on every run: least privilege, deny by default.",
        "# Nothing before the first `user` line, so anonymous clients get nothing.",
    ]
    for client in CLIENTS:
        lines += ["", f"# {client.job}", f"user {client.name}"]
        lines += [f"topic {access} {topic}" for access, topic in client.grants]
    return "\n".join(lines) + "\n"
