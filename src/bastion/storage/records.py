"""What the broker persists, as plain values: the contract between the core and the store.

The broker core (``broker/journal.py``) turns its state changes into ``Op`` tuples of these
records; ``brokerstate.py`` applies a batch of them in one transaction and loads them back
as a ``StoredState`` at start. Times here are wall-clock (``time.time()``) seconds, because
they must survive a restart; payloads and property blocks are plaintext here and sealed by
the store. Nothing in this module knows MQTT beyond field meanings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bastion.records import record

__all__ = [
    "Op",
    "OpKind",
    "StoredInbound",
    "StoredMessage",
    "StoredOutboxEntry",
    "StoredSession",
    "StoredState",
    "StoredSubscription",
    "StoredWill",
]


@record
class StoredMessage:
    """One application message some durable session or the retained store still needs.

    ``msg_id`` is unique in the database (allocated by the broker, above every id loaded at
    start). ``properties`` is the MQTT 5 property block as the codec writes it (no topic
    alias, no subscription identifiers; empty for none). Payload and properties are sealed.
    """

    msg_id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: bytes = b""
    expires_at: float | None = None  # wall clock; None: never
    origin: str | None = None  # publisher's client id (None: the broker)


@record
class StoredSession:
    """A durable session (session expiry > 0). ``offline_since`` is when its last connection
    ended (wall clock), None while connected; a session loaded after a crash that was
    connected counts as offline from the moment of the restart. The username is sealed."""

    client_id: str
    expiry_interval: int
    username: str | None = None
    offline_since: float | None = None


@record
class StoredSubscription:
    client_id: str
    topic_filter: str  # full, with any "$share/{name}/" prefix
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    identifier: int | None = None


@record
class StoredOutboxEntry:
    """One copy of a message in a durable session's outbox: queued (``packet_id`` None) or
    in flight under ``packet_id``; ``released`` once the client's PUBREC came (QoS 2) and
    PUBREL is what remains. Key: (client_id, msg_id, shared); order of delivery: msg_id."""

    client_id: str
    msg_id: int
    shared: bool  # the copy came through a shared subscription (it may move to a peer)
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...] = ()
    attempts: int = 0
    packet_id: int | None = None
    released: bool = False
    share_filter: str | None = None  # "$share/{name}/{filter}" of a shared copy


@record
class StoredInbound:
    """A QoS 2 packet id received from a client whose PUBREL has not come yet."""

    client_id: str
    packet_id: int


@record
class StoredWill:
    """A will waiting for its delay (published at ``due_at``, wall clock). Payload and
    properties are sealed."""

    client_id: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: bytes = b""
    due_at: float = 0.0


OpKind = Literal[
    "put_session",  # StoredSession (insert or replace)
    "delete_session",  # client_id: str; its subscriptions, outbox, inbound ids and will go too
    "put_subscription",  # StoredSubscription (insert or replace by client_id, topic_filter)
    "delete_subscription",  # (client_id, topic_filter)
    "put_message",  # StoredMessage (insert, or nothing if the msg_id exists)
    "put_outbox",  # StoredOutboxEntry (insert or replace by client_id, msg_id, shared)
    "delete_outbox",  # (client_id, msg_id, shared)
    "put_inbound",  # StoredInbound
    "delete_inbound",  # StoredInbound
    "put_retained",  # (topic, msg_id): the retained message of a topic (replacing any)
    "delete_retained",  # topic: str
    "put_will",  # StoredWill (replacing the client's)
    "delete_will",  # client_id: str
]

Op = tuple[OpKind, object]
"""One change: applied in order, a batch in one transaction. Messages no outbox entry or
retained topic refers to any more are removed by the store (its purge, or a checkpoint that
never writes them), not by an op: so a message must be referred to in the batch that stores
it, and once its references are gone a new reference needs its ``put_message`` again (a
repeated one for a msg_id still stored is ignored)."""


@dataclass(slots=True)
class StoredState:
    """Everything loaded at start, ready for ``Broker.restore``."""

    sessions: list[StoredSession] = field(default_factory=list)
    subscriptions: list[StoredSubscription] = field(default_factory=list)
    outbox: list[StoredOutboxEntry] = field(default_factory=list)  # by client, then msg_id
    inbound: list[StoredInbound] = field(default_factory=list)
    retained: dict[str, int] = field(default_factory=dict)  # topic -> msg_id
    wills: list[StoredWill] = field(default_factory=list)
    messages: dict[int, StoredMessage] = field(default_factory=dict)  # every one referred to
    skipped: int = 0  # records that failed authentication (tampered) and were left out
    next_msg_id: int = 1  # above every msg_id in the database
