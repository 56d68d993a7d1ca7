"""Delayed Will Messages (MQTT 5 Will Delay Interval) waiting for their deadline.

``core.py`` schedules a will when a connection ends, cancels it when the client comes back
to its session, and takes it early when the session ends first (§3.1.3.2.2).
"""

from __future__ import annotations

import heapq

from bastion.mqtt.packets import Will


class WillScheduler:
    """Pending delayed wills by client id, with a deadline heap (lazy deletion)."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[float, Will]] = {}
        self._deadlines: list[tuple[float, int, str]] = []
        self._seq = 0

    def schedule(self, client_id: str, will: Will, deadline: float) -> None:
        """Hold ``will`` until ``deadline`` unless it is cancelled or taken first."""
        self._pending[client_id] = (deadline, will)
        self._seq += 1
        heapq.heappush(self._deadlines, (deadline, self._seq, client_id))
        if len(self._deadlines) > 2 * len(self._pending) + 64:
            self._deadlines = [e for e in self._deadlines if self._is_live(e)]
            heapq.heapify(self._deadlines)

    def cancel(self, client_id: str) -> bool:
        """Drop the pending will of ``client_id``; True if there was one."""
        return self._pending.pop(client_id, None) is not None

    def take(self, client_id: str) -> Will | None:
        """Remove and return the pending will of ``client_id`` (its session is ending)."""
        entry = self._pending.pop(client_id, None)
        return None if entry is None else entry[1]

    def pop_due(self, now: float) -> list[tuple[str, Will]]:
        """Remove and return (client id, will) whose deadline is ``now`` or earlier, in order."""
        due: list[tuple[str, Will]] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            entry = heapq.heappop(self._deadlines)
            if self._is_live(entry):
                due.append((entry[2], self._pending.pop(entry[2])[1]))
        return due

    def take_all(self) -> list[tuple[str, Will]]:
        """Remove and return every pending (client id, will): the server is shutting down."""
        wills = [(client_id, will) for client_id, (_, will) in self._pending.items()]
        self._pending.clear()
        self._deadlines.clear()
        return wills

    def next_deadline(self) -> float | None:
        """The earliest pending will deadline, if any."""
        while self._deadlines:
            if self._is_live(self._deadlines[0]):
                return self._deadlines[0][0]
            heapq.heappop(self._deadlines)
        return None

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, client_id: str) -> bool:
        return client_id in self._pending

    def _is_live(self, entry: tuple[float, int, str]) -> bool:
        pending = self._pending.get(entry[2])
        return pending is not None and pending[0] == entry[0]


__all__ = ["WillScheduler"]
