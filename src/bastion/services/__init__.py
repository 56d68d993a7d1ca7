"""The reference system's clients: sensor simulators, door lock, alert service, data logger.

Like any device they reach the broker only over the network: they may import ``mqtt``,
``security``, ``config`` (and ``storage``, for the logger), never broker/transport/runtime.
The pure core is exported here; the networked parts (``netclient`` over ``endpoint``,
``delivery`` and ``runbounds``; the runners ``sensors``, ``alerts``, ``lockservice``,
``datalogger``) are imported from their modules, so the core stays I/O-free.
"""

from __future__ import annotations

from bastion.services.alerting import Alert, AlertEngine, Rule, parse_rule
from bastion.services.doorlock import CommandError, DoorLock, LockCommand, LockResult
from bastion.services.readings import (
    REFERENCE_DEVICES,
    DeviceSpec,
    Reading,
    ReadingError,
    StatusMessage,
)
from bastion.services.signals import (
    HumiditySignal,
    MotionProfile,
    MotionSignal,
    TemperatureSignal,
)
from bastion.services.simulator import DueReading, SensorSimulator

__all__ = [
    "REFERENCE_DEVICES",
    "Alert",
    "AlertEngine",
    "CommandError",
    "DeviceSpec",
    "DoorLock",
    "DueReading",
    "HumiditySignal",
    "LockCommand",
    "LockResult",
    "MotionProfile",
    "MotionSignal",
    "Reading",
    "ReadingError",
    "Rule",
    "SensorSimulator",
    "StatusMessage",
    "TemperatureSignal",
    "parse_rule",
]
