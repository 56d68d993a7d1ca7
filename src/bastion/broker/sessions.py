"""Session state: what survives a network connection (outbox, QoS 2 receipts, expiry).

``SessionState`` is the MQTT Session; ``Session`` is one network connection bound to it
(the handle the transport holds). ``core.py`` creates and ends them, ``delivery.py`` fills
their outboxes.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from bastion.broker.journal import Journal
from bastion.broker.links import ClientLink
from bastion.broker.messages import Delivery
from bastion.mqtt.packets import Packet, Will
from bastion.security.policy import ClientIdentity

NEVER_EXPIRES = 0xFFFFFFFF  # Session Expiry Interval meaning "the session does not expire"
MAX_PACKET_ID = 0xFFFF


@dataclass(slots=True)
class Inflight:
    """An outbound QoS 1/2 PUBLISH waiting for its acknowledgement.

    ``released`` is set once PUBREC arrived and PUBREL went out (QoS 2, waiting for PUBCOMP).
    ``attempts`` counts the transmissions of the packet the flow waits on (the PUBLISH, then
    the PUBREL), resends on resume included: ``delivery.py`` bounds it.
    """

    packet_id: int
    delivery: Delivery
    released: bool = False
    attempts: int = 1


UNLIMITED = 1 << 62  # a byte bound that is never reached


# Every outbox starts with this one empty queue (an empty deque costs ~600 bytes, and most
# sessions never queue); ``maxlen=0`` makes a stray append drop rather than share items.
_NO_QUEUE: deque[Delivery] = deque(maxlen=0)


class Outbox:
    """The outbound QoS 1/2 flow of one session: the inflight window and the pending queue.

    Both are bounded in messages and in bytes (``Message.size``); ``inflight_bytes`` and
    ``queued_bytes`` are kept current by every method that adds or removes a copy.
    """

    __slots__ = (
        "_max_inflight_bytes",
        "_max_queued",
        "_max_queued_bytes",
        "_next_id",
        "_next_purge",
        "inflight",
        "inflight_bytes",
        "journal",
        "lagging_until",
        "overflowing",
        "owner",
        "queue",
        "queued_bytes",
    )

    PURGE_INTERVAL = 1.0  # seconds between scans of a full queue for expired messages

    def __init__(
        self,
        max_queued: int,
        *,
        max_queued_bytes: int = UNLIMITED,
        max_inflight_bytes: int = UNLIMITED,
    ) -> None:
        self.inflight: dict[int, Inflight] = {}  # insertion order = send order
        self.queue: deque[Delivery] = _NO_QUEUE  # a real deque from the first enqueue on
        self.inflight_bytes = 0
        self.queued_bytes = 0
        self.overflowing = False  # copies are being dropped: a queue-full episode runs
        self.lagging_until = 0.0  # until then this session holds no publisher (backpressure)
        self._max_queued = max_queued
        self._max_queued_bytes = max_queued_bytes
        self._max_inflight_bytes = max_inflight_bytes
        self._next_id = 1
        self._next_purge = float("-inf")
        # Set while the session is durable and persistence is on: every change is journaled.
        self.journal: Journal | None = None
        self.owner = ""  # the session's client id, for the journal

    def has_room(self, window: int) -> bool:
        """True if one more message may start its flow within ``window`` and the byte bound."""
        return len(self.inflight) < window and self.inflight_bytes < self._max_inflight_bytes

    def start(self, delivery: Delivery, attempts: int = 1) -> Inflight:
        """Allocate a free packet id for ``delivery`` and record it as inflight."""
        if len(self.inflight) >= MAX_PACKET_ID:
            raise RuntimeError("no free packet identifier")
        packet_id = self._next_id
        while packet_id in self.inflight:
            packet_id = packet_id % MAX_PACKET_ID + 1
        self._next_id = packet_id % MAX_PACKET_ID + 1
        item = Inflight(packet_id, delivery, attempts=attempts)
        self.inflight[packet_id] = item
        self.inflight_bytes += delivery.message.size
        if self.journal is not None:
            self.journal.copy(
                self.owner, delivery, attempts=attempts, packet_id=packet_id, created=True
            )
        return item

    def touch(self, item: Inflight) -> None:
        """Journal a change of ``item``'s stage or transmission count."""
        if self.journal is not None:
            self.journal.copy(
                self.owner,
                item.delivery,
                attempts=item.attempts,
                packet_id=item.packet_id,
                released=item.released,
            )

    def finish(self, packet_id: int) -> Inflight | None:
        """Forget the inflight message ``packet_id`` (its flow is over)."""
        item = self.inflight.pop(packet_id, None)
        if item is not None:
            self.inflight_bytes -= item.delivery.message.size
            if self.journal is not None:
                self.journal.copy_done(self.owner, item.delivery)
        return item

    def queue_fraction(self) -> float:
        """How full the queue is: the larger of its message and byte fill (0 to 1; 0 for an
        outbox that may queue nothing, which drops instead of pushing back)."""
        if self._max_queued <= 0 or self._max_queued_bytes <= 0:
            return 0.0
        return max(len(self.queue) / self._max_queued, self.queued_bytes / self._max_queued_bytes)

    def enqueue(self, delivery: Delivery) -> bool:
        """Queue ``delivery`` behind the others; False (and not queued) when the queue is full."""
        size = delivery.message.size
        if len(self.queue) >= self._max_queued or self.queued_bytes + size > self._max_queued_bytes:
            return False
        queue = self.queue
        if queue is _NO_QUEUE:
            queue = self.queue = deque()
        queue.append(delivery)
        self.queued_bytes += size
        if self.journal is not None:
            self.journal.copy(self.owner, delivery, created=True)
        return True

    def dequeue(self) -> Delivery:
        """Take the oldest queued copy (the queue must not be empty)."""
        delivery = self.queue.popleft()
        self.queued_bytes -= delivery.message.size
        if self.journal is not None:
            self.journal.copy_done(self.owner, delivery)
        return delivery

    def _set_queue(self, queue: deque[Delivery]) -> None:
        self.queue = queue
        self.queued_bytes = sum(d.message.size for d in queue)

    def purge_expired(self, now: float) -> int:
        """Drop queued copies whose message expired; how many (scans at most once a second)."""
        if now < self._next_purge:
            return 0
        self._next_purge = now + self.PURGE_INTERVAL
        before = len(self.queue)
        self._set_queue(deque(d for d in self.queue if not d.message.is_expired(now)))
        return before - len(self.queue)

    def take_shared(self, move: Callable[[Delivery], bool]) -> None:
        """Offer each copy received through a shared subscription to ``move``, oldest first.

        Copies for which ``move`` returns True leave the outbox. Copies already acknowledged
        with PUBREC are never offered: the client has the message. An inflight copy is
        offered with its transmissions so far in ``Delivery.attempts``.
        """
        for packet_id, item in list(self.inflight.items()):
            if item.delivery.group is None or item.released:
                continue
            if move(replace(item.delivery, attempts=item.attempts)):
                self.finish(packet_id)
        if any(d.group is not None for d in self.queue):
            kept: deque[Delivery] = deque()
            for delivery in self.queue:
                if delivery.group is None or not move(delivery):
                    kept.append(delivery)
                elif self.journal is not None:
                    self.journal.copy_done(self.owner, delivery)
            self._set_queue(kept)

    def __len__(self) -> int:
        return len(self.inflight) + len(self.queue)


class SessionState:
    """One MQTT Session: survives its network connections until it expires or is discarded."""

    __slots__ = (
        "client_id",
        "connection",
        "expires_at",
        "expiry_interval",
        "identity",
        "inbound_qos2",
        "outbox",
    )

    def __init__(
        self,
        client_id: str,
        identity: ClientIdentity,
        max_queued: int,
        *,
        max_queued_bytes: int = UNLIMITED,
        max_inflight_bytes: int = UNLIMITED,
    ) -> None:
        self.client_id = client_id
        self.identity = identity  # of the latest connection; used to authorize deliveries
        self.expiry_interval = 0
        self.expires_at: float | None = None  # deadline while offline; None = never
        self.outbox = Outbox(
            max_queued, max_queued_bytes=max_queued_bytes, max_inflight_bytes=max_inflight_bytes
        )
        # QoS 2 packet ids received whose PUBREL has not come yet -> when they are forgotten
        # (``math.inf``: never).
        self.inbound_qos2: dict[int, float] = {}
        self.connection: Session | None = None

    @property
    def online(self) -> bool:
        """True while a network connection is bound to the session."""
        return self.connection is not None


class Session:
    """One network connection bound to a ``SessionState``: the handle the transport holds.

    ``open`` turns False when the broker closed the link or the connection ended; packets
    still arriving on it are then ignored.
    """

    __slots__ = (
        "auth_method",
        "connect_expiry_interval",
        "deferred",
        "held",
        "identity",
        "keep_alive",
        "link",
        "max_qos",
        "open",
        "problem_information",
        "protocol_version",
        "state",
        "will",
        "window",
    )

    def __init__(
        self,
        link: ClientLink,
        state: SessionState,
        protocol_version: int,
        *,
        window: int,
        keep_alive: int,
        problem_information: bool = True,
        max_qos: int = 2,
    ) -> None:
        self.link = link
        self.state = state
        self.identity = state.identity
        self.protocol_version = protocol_version
        self.window = window  # outbound QoS 1/2 messages allowed unacknowledged
        self.keep_alive = keep_alive
        self.problem_information = problem_information
        self.max_qos = max_qos  # Maximum QoS: accepted from the client, granted to it
        self.will: Will | None = None
        self.connect_expiry_interval = state.expiry_interval
        self.open = True
        self.auth_method: str | None = None  # MQTT 5 enhanced authentication used at CONNECT
        self.deferred = 0  # acknowledgements to this client waiting for a commit
        self.held: list[Packet] | None = None  # packets queued behind a CONNACK not yet sent

    @property
    def client_id(self) -> str:
        """The session's client identifier (assigned by the broker if the client sent none)."""
        return self.state.client_id

    @property
    def attached(self) -> bool:
        """True while this connection is the one its session is bound to."""
        return self.state.connection is self

    def __repr__(self) -> str:
        return f"Session({self.client_id!r}, peer={self.link.peer!r}, open={self.open})"


class SessionRegistry:
    """Every session by client id, with the expiry deadlines of the offline ones."""

    def __init__(self) -> None:
        self._by_id: dict[str, SessionState] = {}
        self._deadlines: list[tuple[float, int, str]] = []
        self._seq = 0

    def get(self, client_id: str) -> SessionState | None:
        return self._by_id.get(client_id)

    def __contains__(self, client_id: str) -> bool:
        return client_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[SessionState]:
        return iter(list(self._by_id.values()))

    def add(self, state: SessionState) -> None:
        self._by_id[state.client_id] = state

    def remove(self, state: SessionState) -> None:
        if self._by_id.get(state.client_id) is state:
            del self._by_id[state.client_id]

    def go_offline(self, state: SessionState, now: float) -> None:
        """Start the expiry clock of ``state``, whose connection just ended."""
        if state.expiry_interval >= NEVER_EXPIRES:
            state.expires_at = None
            return
        state.expires_at = now + state.expiry_interval
        self._seq += 1
        heapq.heappush(self._deadlines, (state.expires_at, self._seq, state.client_id))
        if len(self._deadlines) > 2 * len(self._by_id) + 64:
            self._compact()

    def pop_expired(self, now: float) -> list[SessionState]:
        """Offline sessions whose expiry deadline is ``now`` or earlier (removed from the heap)."""
        expired: list[SessionState] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, client_id = heapq.heappop(self._deadlines)
            state = self._valid(deadline, client_id)
            if state is not None:
                expired.append(state)
        return expired

    def next_deadline(self) -> float | None:
        """The earliest pending expiry deadline, if any."""
        while self._deadlines:
            deadline, _, client_id = self._deadlines[0]
            if self._valid(deadline, client_id) is not None:
                return deadline
            heapq.heappop(self._deadlines)
        return None

    def _valid(self, deadline: float, client_id: str) -> SessionState | None:
        state = self._by_id.get(client_id)
        if state is None or state.online or state.expires_at != deadline:
            return None
        return state

    def _compact(self) -> None:
        self._deadlines = [e for e in self._deadlines if self._valid(e[0], e[2]) is not None]
        heapq.heapify(self._deadlines)


__all__ = [
    "NEVER_EXPIRES",
    "UNLIMITED",
    "Inflight",
    "Outbox",
    "Session",
    "SessionRegistry",
    "SessionState",
]
