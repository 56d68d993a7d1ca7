"""Broker core with a write-ahead journal: what is journaled, what waits for the commit,
and that a broker restored from the journal carries on where the first one stopped.

``ModelStore`` applies the journal's ops to plain dicts (the reference the SQLite store is
held to in tests/unit/storage) and loads them back as a ``StoredState``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from brokerkit import Client, FakeLink, Harness

from bastion.broker.core import Broker
from bastion.broker.journal import WriteAheadJournal
from bastion.broker.restore import restore
from bastion.mqtt.packets import (
    Connack,
    Connect,
    Pingreq,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Will,
)
from bastion.storage.records import (
    Op,
    StoredInbound,
    StoredMessage,
    StoredOutboxEntry,
    StoredSession,
    StoredState,
    StoredSubscription,
    StoredWill,
)


@dataclass
class ModelStore:
    sessions: dict[str, StoredSession] = field(default_factory=dict)
    subscriptions: dict[tuple[str, str], StoredSubscription] = field(default_factory=dict)
    messages: dict[int, StoredMessage] = field(default_factory=dict)
    outbox: dict[tuple[str, int, bool], StoredOutboxEntry] = field(default_factory=dict)
    inbound: set[tuple[str, int]] = field(default_factory=set)
    retained: dict[str, int] = field(default_factory=dict)
    wills: dict[str, StoredWill] = field(default_factory=dict)

    def apply(self, ops: list[Op]) -> None:
        for kind, value in ops:
            if kind == "put_session":
                assert isinstance(value, StoredSession)
                self.sessions[value.client_id] = value
            elif kind == "delete_session":
                assert isinstance(value, str)
                self.sessions.pop(value, None)
                for table in (self.subscriptions, self.outbox):
                    for key in [k for k in table if k[0] == value]:
                        del table[key]  # type: ignore[arg-type]
                self.inbound = {i for i in self.inbound if i[0] != value}
                self.wills.pop(value, None)
            elif kind == "put_subscription":
                assert isinstance(value, StoredSubscription)
                self.subscriptions[value.client_id, value.topic_filter] = value
            elif kind == "delete_subscription":
                assert isinstance(value, tuple)
                self.subscriptions.pop(value, None)
            elif kind == "put_message":
                assert isinstance(value, StoredMessage)
                self.messages.setdefault(value.msg_id, value)
            elif kind == "put_outbox":
                assert isinstance(value, StoredOutboxEntry)
                self.outbox[value.client_id, value.msg_id, value.shared] = value
            elif kind == "delete_outbox":
                assert isinstance(value, tuple)
                self.outbox.pop(value, None)
            elif kind in ("put_inbound", "delete_inbound"):
                assert isinstance(value, StoredInbound)
                pair = (value.client_id, value.packet_id)
                if kind == "put_inbound":
                    self.inbound.add(pair)
                else:
                    self.inbound.discard(pair)
            elif kind == "put_retained":
                assert isinstance(value, tuple)
                self.retained[value[0]] = value[1]
            elif kind == "delete_retained":
                assert isinstance(value, str)
                self.retained.pop(value, None)
            elif kind == "put_will":
                assert isinstance(value, StoredWill)
                self.wills[value.client_id] = value
            elif kind == "delete_will":
                assert isinstance(value, str)
                self.wills.pop(value, None)

    def load(self) -> StoredState:
        used = {e.msg_id for e in self.outbox.values()} | set(self.retained.values())
        return StoredState(
            sessions=list(self.sessions.values()),
            subscriptions=list(self.subscriptions.values()),
            outbox=sorted(self.outbox.values(), key=lambda e: (e.client_id, e.msg_id)),
            inbound=[StoredInbound(c, p) for c, p in sorted(self.inbound)],
            retained=dict(self.retained),
            wills=list(self.wills.values()),
            messages={i: m for i, m in self.messages.items() if i in used},
            next_msg_id=max(self.messages, default=0) + 1,
        )


class Durable:
    """A harness whose broker journals into a ``ModelStore``; ``commit`` runs the batch."""

    def __init__(self) -> None:
        self.journal = WriteAheadJournal(wall_offset=1_000_000.0)
        self.harness = Harness(journal=self.journal)
        self.harness.after_connect = self.commit
        self.store = ModelStore()

    def commit(self, failure: int = 0) -> int:
        """Commit the batch (``failure``: the reason code of a write that failed)."""
        ops, actions = self.journal.take()
        if not failure:
            self.store.apply(ops)
        for action in actions:
            action(failure)
        return len(ops)

    def restart(self, after: float = 1.0) -> Harness:
        """A new broker from what was committed (the old one is simply dropped: a crash)."""
        self.commit()
        journal = WriteAheadJournal(wall_offset=1_000_000.0)
        settings: dict[str, object] = dict(self.harness.settings.model_dump())
        settings["journal"] = journal
        fresh = Harness(None, **settings)
        fresh.after_connect = self.commit
        fresh.now = self.harness.now + after
        restore(fresh.broker, self.store.load(), fresh.now)
        self.journal = journal
        self.harness = fresh
        return fresh


def _subscribe_durably(d: Durable, client: Client, topic_filter: str, qos: int) -> None:
    """SUBSCRIBE from a durable session: its SUBACK waits for the commit."""
    client.send(Subscribe(client.next_id(), (Subscription(topic_filter, qos),)))
    assert client.take() == []
    d.commit()
    [suback] = client.take()
    assert isinstance(suback, Suback) and suback.reason_codes == (qos,)


def _durable_sub(d: Durable, client_id: str = "sub", qos: int = 1, version: int = 5) -> Client:
    client = d.harness.connect(client_id, clean=False, expiry=3600, version=version)
    _subscribe_durably(d, client, "t/#", qos)
    return client


def test_puback_waits_for_the_commit_of_a_durable_copy() -> None:
    d = Durable()
    h = d.harness
    _durable_sub(d).drop()  # offline: the message is queued for it
    pub = h.connect("pub")
    pub.publish("t/1", b"m", qos=1, packet_id=7)
    assert pub.take() == []  # not yet: nothing promised before it is on disk
    assert d.commit() > 0
    assert pub.take() == [Puback(7)]


def test_puback_is_immediate_when_nothing_durable_is_involved() -> None:
    d = Durable()
    h = d.harness
    h.connect("clean").subscribe("t/#", qos=1)
    pub = h.connect("pub")
    pub.publish("t/1", b"m", qos=1, packet_id=3)
    assert [p for p in pub.take() if isinstance(p, Puback)] == [Puback(3)]


def test_acknowledgements_keep_their_order_behind_a_waiting_one() -> None:
    d = Durable()
    h = d.harness
    _durable_sub(d).drop()
    pub = h.connect("pub")
    pub.publish("t/1", b"durable", qos=1, packet_id=1)
    pub.publish("x/1", b"nobody", qos=1, packet_id=2)  # writes nothing, but must wait its turn
    assert pub.take() == []
    d.commit()
    assert pub.take() == [Puback(1), Puback(2, 0x10)]  # 0x10: no matching subscribers


def test_a_failed_commit_refuses_with_its_reason_or_closes_a_311_client() -> None:
    d = Durable()
    h = d.harness
    _durable_sub(d).drop()
    pub = h.connect("pub")
    pub.publish("t/1", b"m", qos=1, packet_id=1)
    pub.publish("t/2", b"m", qos=2, packet_id=2)
    d.commit(failure=0x97)  # the store is full
    assert pub.take() == [Puback(1, 0x97), Pubrec(2, 0x97)]
    assert pub.live.state.inbound_qos2 == {}  # the refused QoS 2 flow is over
    old = h.connect("old", version=4)
    old.publish("t/3", b"m", qos=1, packet_id=3)
    d.commit(failure=0x80)
    assert old.take() == []
    assert old.link.closes == [None]  # 3.1.1: a plain close, no reason on the wire


def _acks(client: Client) -> list[tuple[int, int]]:
    """(packet id, reason code) of the PUBACKs and PUBRECs ``client`` got."""
    return [(p.packet_id, p.reason_code) for p in client.take() if isinstance(p, Puback | Pubrec)]


def test_a_full_store_refuses_new_durable_work_up_front_and_qos0_flows() -> None:
    """While the runtime says the store is full: QoS 1/2 for a durable session and retained
    messages are refused before routing (0x97; 3.1.1 closed), nothing is journaled; QoS 0,
    work for clean sessions and acknowledgements go on; the flag cleared, all is accepted."""
    d = Durable()
    h = d.harness
    sub = _durable_sub(d)
    clean = h.connect("clean")
    clean.subscribe("c/#", qos=1)
    pub = h.connect("pub")
    d.journal.full = True
    before = d.journal.changes()
    pub.publish("t/1", b"durable", qos=1, packet_id=1)
    pub.publish("t/2", b"durable", qos=2, packet_id=2)
    pub.publish("c/1", b"retained", qos=1, packet_id=3, retain=True)
    assert _acks(pub) == [(1, 0x97), (2, 0x97), (3, 0x97)]
    assert d.journal.changes() == before  # refused before routing: nothing was written
    assert sub.take_publishes() == []
    pub.publish("t/3", b"reading", qos=0)
    pub.publish("c/2", b"clean", qos=1, packet_id=4)
    assert [m.payload for m in sub.take_publishes()] == [b"reading"]
    assert [m.payload for m in clean.take_publishes()] == [b"clean"]
    assert _acks(pub) == [(4, 0)]
    assert h.stats.store_refused == 3
    old = h.connect("old", version=4)
    old.publish("t/4", b"m", qos=1, packet_id=5)
    assert old.link.closes == [None]  # 3.1.1: a plain close, no reason on the wire
    d.journal.full = False
    pub.publish("t/5", b"room again", qos=1, packet_id=6)
    d.commit()
    assert pub.take() == [Puback(6)]
    assert [m.payload for m in sub.take_publishes()] == [b"room again"]


def test_queued_messages_and_session_present_survive_a_restart() -> None:
    d = Durable()
    h = d.harness
    _durable_sub(d).drop()
    pub = h.connect("pub")
    for i in range(3):
        pub.publish("t/a", f"m{i}".encode(), qos=1)
    d.commit()
    h2 = d.restart()
    sub = h2.connect("sub", clean=False, expiry=3600)
    assert sub.connack.session_present
    got = sub.take_publishes()
    assert [m.payload for m in got] == [b"m0", b"m1", b"m2"]
    for msg in got:
        sub.ack(msg)
    d.commit()
    assert d.store.outbox == {}


def test_inflight_copies_are_resent_with_dup_and_the_same_packet_id() -> None:
    d = Durable()
    h = d.harness
    sub = _durable_sub(d, qos=2)
    pub = h.connect("pub")
    pub.publish("t/x", b"once", qos=2, packet_id=5)
    assert sub.take_publishes() == []  # QoS 2 out: only once its packet id is durable
    d.commit()
    [first] = sub.take_publishes()
    assert first.qos == 2 and not first.dup
    h2 = d.restart()
    back = h2.connect("sub", clean=False, expiry=3600)
    [again] = back.take_publishes()
    assert (again.packet_id, again.dup, again.payload) == (first.packet_id, True, b"once")


def test_a_released_qos2_flow_resumes_with_pubrel_not_a_second_publish() -> None:
    d = Durable()
    h = d.harness
    sub = _durable_sub(d, qos=2)
    h.connect("pub").publish("t/x", b"once", qos=2, packet_id=1)
    d.commit()
    [msg] = sub.take_publishes()
    assert msg.packet_id is not None
    sub.send(Pubrec(msg.packet_id))
    assert sub.take() == []  # PUBREL waits until "released" is durable
    d.commit()
    assert sub.take() == [Pubrel(msg.packet_id)]
    h2 = d.restart()
    back = h2.connect("sub", clean=False, expiry=3600)
    assert back.take() == [Pubrel(msg.packet_id)]
    back.send(Pubcomp(msg.packet_id))
    d.commit()
    assert d.store.outbox == {}


def test_inbound_qos2_ids_survive_so_a_resent_publish_is_not_routed_twice() -> None:
    d = Durable()
    h = d.harness
    sub = _durable_sub(d, qos=2)
    pub = h.connect("pub", clean=False, expiry=3600)
    pub.publish("t/x", b"once", qos=2, packet_id=9)
    d.commit()
    assert pub.take() == [Pubrec(9)]
    [msg] = sub.take_publishes()
    h2 = d.restart()
    pub2 = h2.connect("pub", clean=False, expiry=3600)
    pub2.publish("t/x", b"once", qos=2, packet_id=9, dup=True)  # the client's resend
    d.commit()
    assert pub2.take() == [Pubrec(9)]
    sub2 = h2.connect("sub", clean=False, expiry=3600)
    assert [p.payload for p in sub2.take_publishes()] == [b"once"]  # the old copy only
    pub2.send(Pubrel(9))
    assert pub2.take() == []  # PUBCOMP once the id's removal is durable
    d.commit()
    assert pub2.take() == [Pubcomp(9)]
    assert d.store.inbound == set()
    assert msg.payload == b"once"


def test_retained_messages_subscriptions_and_delayed_wills_survive() -> None:
    d = Durable()
    h = d.harness
    h.connect("pub").publish("r/t", b"kept", retain=True)
    will = Will("status/dev", b"offline", 1, True, Properties(will_delay_interval=60))
    dev = h.connect("dev", clean=False, expiry=3600, will=will)
    _subscribe_durably(d, dev, "cmd/#", 1)
    dev.drop()  # the will waits 60 s
    d.commit()
    assert set(d.store.wills) == {"dev"}
    h2 = d.restart(after=10.0)
    watcher = h2.connect("watcher")
    watcher.subscribe("r/t")
    [kept] = watcher.take_publishes()
    assert (kept.payload, kept.retain) == (b"kept", True)
    watcher.subscribe("status/#", qos=1)
    h2.advance(55.0)  # 10 + 55 > 60: the restored will fires on time
    [fired] = watcher.take_publishes()
    assert fired.payload == b"offline"
    back = h2.connect("dev", clean=False, expiry=3600)
    h2.connect("ctl").publish("cmd/open", b"1", qos=1)
    assert [p.topic for p in back.take_publishes()] == ["cmd/open"]


def test_a_new_durable_sessions_connack_waits_and_nothing_overtakes_it() -> None:
    d = Durable()
    h = d.harness
    h.after_connect = None
    link = FakeLink(protocol_version=5)
    packet = Connect(5, "dev", clean_start=False, properties=Properties(session_expiry_interval=60))
    session = h.broker.connect(link, packet, h.now)
    assert session is not None and link.sent == []  # the session is not durable yet
    h.broker.receive(session, Pingreq(), h.now)  # pipelined before the CONNACK
    assert link.sent == []
    d.commit()
    assert [type(p) for p in link.sent] == [Connack, Pingresp]
    assert d.store.sessions["dev"].expiry_interval == 60


def test_an_expired_session_is_not_restored() -> None:
    d = Durable()
    h = d.harness
    h.connect("brief", clean=False, expiry=5).drop()
    d.commit()
    h2 = d.restart(after=10.0)
    assert not h2.connect("brief", clean=False, expiry=5).connack.session_present
    d.commit()
    assert "brief" in d.store.sessions  # the new session, journaled again


def test_clean_sessions_and_qos0_write_nothing() -> None:
    d = Durable()
    h = d.harness
    sub = h.connect("clean")
    sub.subscribe("t/#", qos=1)
    pub = h.connect("pub")
    for i in range(5):
        pub.publish("t/a", b"x", qos=i % 2)
    assert d.commit() == 0
    assert len(sub.take_publishes()) == 5


def test_restore_into_a_broker_without_persistence_also_works() -> None:
    d = Durable()
    _durable_sub(d).drop()
    d.harness.connect("pub").publish("t/a", b"m", qos=1)
    d.commit()
    plain = Broker(d.harness.settings, d.harness.broker.policy)
    report = restore(plain, d.store.load(), 0.0)
    assert (report.sessions, report.queued) == (1, 1)
    state = plain.sessions.get("sub")
    assert state is not None and [d.message.payload for d in state.outbox.queue] == [b"m"]
    assert state.outbox.journal is None  # nothing journals without persistence


def test_every_batch_that_refers_to_a_message_also_stores_it() -> None:
    """The store may purge a message between batches once nothing refers to it, so a batch
    with a new copy of a message carries the message too (once per batch); a copy whose row
    lives on (queued, then in flight) keeps its message and needs no second one."""
    d = Durable()
    h = d.harness
    _durable_sub(d, "a").drop()
    _durable_sub(d, "b").drop()
    h.connect("pub").publish("t/1", b"m", qos=1)
    ops, actions = d.journal.take()
    assert [kind for kind, _ in ops].count("put_message") == 1  # two copies, one message
    d.store.apply(ops)
    for action in actions:
        action(0)
    h.after_connect = None  # a resumed session's CONNACK does not wait: look at the batch
    h.connect("a", clean=False, expiry=3600)  # the copy moves from queue to in flight
    ops, _ = d.journal.take()
    assert [kind for kind, _ in ops].count("put_message") == 0
    # the queue row is replaced by the in-flight row: one upsert, no delete before it
    assert [kind for kind, _ in ops if kind.endswith("_outbox")] == ["put_outbox"]


def test_a_restored_shared_copy_stays_a_shared_copy() -> None:
    """A copy that came through a shared subscription is restored as one: acknowledged after
    the restart, its row goes (no redelivery after a second restart)."""
    d = Durable()
    h = d.harness
    member = h.connect("member", clean=False, expiry=3600)
    _subscribe_durably(d, member, "$share/g/t/#", 1)
    member.drop()
    h.connect("pub").publish("t/1", b"shared", qos=1, packet_id=1)
    d.commit()
    assert [key[2] for key in d.store.outbox] == [True]
    h = d.restart()
    back = h.connect("member", clean=False, expiry=3600)
    [copy] = back.take_publishes()
    assert copy.payload == b"shared"
    back.ack(copy)
    d.commit()
    assert d.store.outbox == {}  # the shared row itself was deleted
    h = d.restart()
    again = h.connect("member", clean=False, expiry=3600)
    assert again.take_publishes() == []


def test_broker_crashes_do_not_use_up_a_copys_delivery_attempts() -> None:
    """max_delivery_attempts bounds resends a client provokes, not restarts of the broker."""
    d = Durable()
    h = d.harness
    sub = _durable_sub(d, qos=1)
    h.connect("pub").publish("t/x", b"kept", qos=1)
    d.commit()
    [first] = sub.take_publishes()
    for _ in range(5):  # more restarts than max_delivery_attempts (3)
        h = d.restart()
        back = h.connect("sub", clean=False, expiry=3600)
        [again] = back.take_publishes()
        assert (again.payload, again.dup, again.packet_id) == (b"kept", True, first.packet_id)
        d.commit()
    assert h.stats.messages_dropped_redelivery == 0


def test_a_copy_acknowledged_before_the_commit_is_never_written() -> None:
    """Online durable subscriber, QoS 1: the copy and its message cancel out within the batch,
    yet the publisher's PUBACK still waits for the commit."""
    d = Durable()
    h = d.harness
    sub = _durable_sub(d, qos=1)
    pub = h.connect("pub")
    pub.publish("t/a", b"fast", qos=1, packet_id=4)
    [msg] = sub.take_publishes()
    sub.ack(msg)  # before the group commit
    assert pub.take() == []
    ops, actions = d.journal.take()
    assert [kind for kind, _ in ops if kind in ("put_message", "put_outbox")] == []
    assert [kind for kind, _ in ops if kind == "delete_outbox"] == []
    for action in actions:
        action(0)
    assert pub.take() == [Puback(4)]
    h2 = d.restart()  # nothing is owed to the subscriber after a crash
    back = h2.connect("sub", clean=False, expiry=3600)
    assert back.take_publishes() == []


def test_a_copy_stored_in_an_earlier_batch_is_still_deleted() -> None:
    d = Durable()
    h = d.harness
    sub = _durable_sub(d, qos=1)
    h.connect("pub").publish("t/a", b"slow", qos=1)
    d.commit()  # the in-flight copy is stored
    [msg] = sub.take_publishes()
    sub.ack(msg)
    ops, _ = d.journal.take()
    assert [kind for kind, _ in ops] == ["delete_outbox"]
