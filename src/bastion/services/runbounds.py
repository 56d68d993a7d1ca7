"""When a service run ends, and the waiting a runner does until then.

``RunBounds`` joins the stop event (SIGINT/SIGTERM, from ``cli/clientopts.py``) and the
optional ``--duration``; the runners (``sensors``, ``alerts``, ``lockservice``,
``datalogger``) connect, wait and read their ``netclient.ServiceClient`` within it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from bastion.services.delivery import Received
    from bastion.services.netclient import ServiceClient

__all__ = ["RECEIVE_POLL", "RunBounds"]

RECEIVE_POLL: Final = 0.2  # how often ``RunBounds.messages`` looks at the clock and the stop


class RunBounds:
    """When a service run ends: ``stop`` is set (SIGINT/SIGTERM) or ``duration`` has passed."""

    __slots__ = ("_deadline", "duration", "stop")

    def __init__(self, stop: threading.Event, duration: float | None = None) -> None:
        self.stop = stop
        self.duration = duration
        self._deadline = None if duration is None else time.monotonic() + duration

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None without a duration."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def deadline(self) -> float | None:
        """When the run ends on the ``time.monotonic`` clock, or None without a duration."""
        return self._deadline

    def done(self) -> bool:
        """Whether the run should end now."""
        left = self.remaining()
        return self.stop.is_set() or (left is not None and left <= 0.0)

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, waking early when the run ends."""
        left = self.remaining()
        self.stop.wait(max(0.0, seconds if left is None else min(seconds, left)))

    def connect(self, client: ServiceClient) -> bool:
        """Connect ``client`` within the run; False if the run ended first (ConnectError if
        the client gave up or the duration passed without a connection)."""
        return client.connect(self.remaining(), cancel=self.stop)

    def messages(self, client: ServiceClient) -> Iterator[Received]:
        """``client``'s inbox until the run ends; raises the client's ConnectError if it
        gives up meanwhile."""
        while not self.done():
            if client.failure is not None:
                raise client.failure
            left = self.remaining()
            message = client.receive(RECEIVE_POLL if left is None else min(RECEIVE_POLL, left))
            if message is not None:
                yield message
