"""Publisher backpressure: stop reading from publishers while a live subscriber's queue is full.

``delivery.py`` reports the online sessions whose QoS 1/2 queue passed its high-water mark
while routing one message; ``inbound.py`` then holds that message's publisher here (its link
stops reading, so TCP slows the client down instead of the broker dropping acknowledged
copies). A hold ends when every congested queue drained to its low-water mark, went offline,
or after ``max_hold`` seconds: a subscriber that has not caught up by then is marked lagging
for ``LAGGING_COOLDOWN`` seconds, in which it holds nobody and its overflow is dropped as
before (so one slow or hostile subscriber can stall publishers for a bounded time only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from bastion.broker.sessions import Outbox, Session, SessionState

LAGGING_COOLDOWN = 30.0  # seconds a subscriber that outlasted a hold holds nobody


def high_water(outbox: Outbox) -> bool:
    """True when the queue is half full (in messages or in bytes)."""
    return outbox.queue_fraction() >= 0.5


def low_water(outbox: Outbox) -> bool:
    """True when the queue has drained to an eighth of its bounds."""
    return outbox.queue_fraction() <= 0.125


class Backpressure:
    """Which publishers are held, and by which congested subscriber sessions."""

    __slots__ = ("_blockers", "_since", "_waiters", "max_hold")

    def __init__(self, max_hold: float) -> None:
        self.max_hold = max_hold  # 0 disables holding altogether
        self._waiters: dict[str, set[Session]] = {}  # subscriber client id -> held publishers
        self._blockers: dict[Session, set[str]] = {}  # held publisher -> subscriber client ids
        self._since: dict[Session, float] = {}  # held publisher -> when its hold began

    @property
    def enabled(self) -> bool:
        return self.max_hold > 0

    def __len__(self) -> int:
        """Publishers held right now."""
        return len(self._blockers)

    def is_held(self, publisher: Session) -> bool:
        return publisher in self._blockers

    def holds_for(self, client_id: str) -> bool:
        """True while ``client_id``'s queue keeps some publisher waiting."""
        return client_id in self._waiters

    def hold(self, publisher: Session, congested: Iterable[SessionState], now: float) -> None:
        """Hold ``publisher`` until each of ``congested`` (other than its own) drains."""
        blockers = self._blockers.get(publisher)
        for state in congested:
            if state is publisher.state:
                continue  # never wait on yourself: your own acknowledgements must get in
            if blockers is None:
                blockers = self._blockers[publisher] = set()
                self._since[publisher] = now
                publisher.link.pause_reading()
            blockers.add(state.client_id)
            self._waiters.setdefault(state.client_id, set()).add(publisher)

    def relieve(self, client_id: str) -> None:
        """The session ``client_id`` drained or went away: release what it held."""
        held = self._waiters.pop(client_id, None)
        if held is None:
            return
        for publisher in held:
            blockers = self._blockers.get(publisher)
            if blockers is None:
                continue
            blockers.discard(client_id)
            if not blockers:
                self._release(publisher)

    def forget(self, publisher: Session) -> None:
        """``publisher``'s connection ended: drop it from every wait list."""
        blockers = self._blockers.pop(publisher, None)
        self._since.pop(publisher, None)
        if blockers is None:
            return
        for client_id in blockers:
            held = self._waiters.get(client_id)
            if held is not None:
                held.discard(publisher)
                if not held:
                    del self._waiters[client_id]

    def expire(self, now: float, lookup: Callable[[str], SessionState | None]) -> list[str]:
        """End holds older than ``max_hold``; returns the subscribers now marked lagging
        (``lookup`` finds a session by client id)."""
        overdue = [p for p, since in self._since.items() if now - since >= self.max_hold]
        if not overdue:
            return []
        lagging: set[str] = set()
        for publisher in overdue:
            lagging.update(self._blockers.get(publisher, ()))
        for client_id in lagging:
            state = lookup(client_id)
            if state is not None:
                state.outbox.lagging_until = now + LAGGING_COOLDOWN
            self.relieve(client_id)
        return sorted(lagging)

    def next_deadline(self) -> float | None:
        if not self._since:
            return None
        return min(self._since.values()) + self.max_hold

    def release_all(self) -> None:
        for publisher in list(self._blockers):
            self._release(publisher)
        self._waiters.clear()

    def _release(self, publisher: Session) -> None:
        self._blockers.pop(publisher, None)
        self._since.pop(publisher, None)
        if publisher.open:
            publisher.link.resume_reading()


__all__ = ["LAGGING_COOLDOWN", "Backpressure", "high_water", "low_water"]
