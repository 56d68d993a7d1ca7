"""The crash scenario: the traffic, the seeded kill schedule, the run, and what must hold.

Traffic (the same in the control run and the kill run):

* four durable publishers, 3.1.1 and 5.0 at QoS 1 and QoS 2, each publishing
  ``MESSAGES_PER_PUBLISHER`` numbered messages (JSON ``{"pub": name, "seq": n}``) to a topic
  of its own, paced 2-5 ms apart, with at most ``WINDOW`` unacknowledged at a time;
* three retained QoS 1 messages published before the load, and a retained QoS 1 message on a
  topic of its own after every ``RETAIN_EVERY``-th message of ``p5q1`` during it;
* four durable subscribers, 3.1.1 and 5.0, subscribed before the load starts (after their
  SUBACK) with QoS 1 and QoS 2 filters. ``s311off`` and ``s5off`` disconnect cleanly for a
  while, so that messages are queued for them while they are away (and while the broker is
  killed), then reconnect.

Schedule: ``random.Random(seed)`` picks 4-6 kill points (one in each equal slice of 8-92 % of
the load, counted in acknowledgements, so every kill lands mid-stream however long a restart
takes), a delay of 0-30 ms after each point, a downtime of 0-300 ms before the restart, and the
moments the two subscribers leave and come back: ``s311off`` is away across the first two
kills, ``s5off`` across the last two.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from support.clients import loopback_address

from .durable import (
    V5,
    V311,
    DurableClient,
    MsgKey,
    Published,
    Publisher,
    Received,
    Subscriber,
)
from .process import CrashBroker

MESSAGES_PER_PUBLISHER: Final = 240  # x4 = 960 per subscriber, below a session's 1000-queue
RETAIN_EVERY: Final = 60
EARLY_RETAINED: Final = 3
CONNECT_TIMEOUT: Final = 10.0
RECONNECT_TIMEOUT: Final = 15.0  # after a restart, for every online client
LOAD_TIMEOUT: Final = 50.0  # from the first publication to the last acknowledgement
DELIVERY_TIMEOUT: Final = 25.0  # then for every subscriber to have every acknowledged message
SETTLE: Final = 1.0  # then, for late duplicates
STALL_TIMEOUT: Final = 10.0  # a wait gives up early when nothing moved for this long
RETAINED_TIMEOUT: Final = 10.0
SHOWN: Final = 8  # ids listed per kind of problem


@dataclass(frozen=True, slots=True)
class PubSpec:
    name: str
    version: int
    qos: int
    retain_every: int = 0


@dataclass(frozen=True, slots=True)
class SubSpec:
    name: str
    version: int
    filters: tuple[tuple[str, int], ...]  # relative to the run's base topic
    goes_offline: bool


PUBLISHERS: Final = (
    PubSpec("p311q1", V311, 1),
    PubSpec("p5q2", V5, 2),
    PubSpec("p311q2", V311, 2),
    PubSpec("p5q1", V5, 1, retain_every=RETAIN_EVERY),
)
SUBSCRIBERS: Final = (
    SubSpec("s311on", V311, (("load/q1/#", 1), ("load/q2/#", 2)), goes_offline=False),
    SubSpec("s5on", V5, (("load/#", 2),), goes_offline=False),
    SubSpec("s311off", V311, (("load/#", 2),), goes_offline=True),
    SubSpec("s5off", V5, (("load/q1/#", 2), ("load/q2/#", 1)), goes_offline=True),
)


# ---------------------------------------------------------------------- the seeded plan


@dataclass(frozen=True, slots=True)
class KillPoint:
    after_acks: int  # kill once the publishers have this many acknowledgements in all...
    delay: float  # ...plus this many seconds
    downtime: float  # seconds between the broker's death and its restart


@dataclass(frozen=True, slots=True)
class Absence:
    subscriber: str
    leave_at: int  # acknowledgements (as for KillPoint)
    return_at: int


@dataclass(frozen=True, slots=True)
class Plan:
    seed: int
    total: int  # acknowledgements expected during the load
    kills: tuple[KillPoint, ...]
    absences: tuple[Absence, ...]
    paces: tuple[float, ...]  # one per publisher, seconds between publications

    def describe(self) -> str:
        kills = ", ".join(
            f"{k.after_acks}+{k.delay * 1000:.0f}ms (down {k.downtime * 1000:.0f}ms)"
            for k in self.kills
        )
        away = ", ".join(f"{a.subscriber} {a.leave_at}..{a.return_at}" for a in self.absences)
        paces = ", ".join(
            f"{p.name} {pace * 1000:.1f}ms" for p, pace in zip(PUBLISHERS, self.paces, strict=True)
        )
        return (
            f"plan (of {self.total} acknowledgements): kills at {kills}; away: {away}; "
            f"pace: {paces}"
        )


def load_total() -> int:
    retained = sum(
        len([s for s in range(MESSAGES_PER_PUBLISHER) if s % p.retain_every == p.retain_every // 2])
        for p in PUBLISHERS
        if p.retain_every
    )
    return MESSAGES_PER_PUBLISHER * len(PUBLISHERS) + retained


def make_plan(seed: int, total: int) -> Plan:
    """The same seed gives the same plan; the control run uses it without the kills."""
    rng = random.Random(seed)
    count = rng.randint(4, 6)
    low, high = 0.08 * total, 0.92 * total
    width = (high - low) / count
    kills = tuple(
        KillPoint(
            after_acks=int(low + width * (i + rng.uniform(0.1, 0.9))),
            delay=rng.uniform(0.0, 0.03),
            downtime=rng.uniform(0.0, 0.3),
        )
        for i in range(count)
    )
    at = [k.after_acks for k in kills]
    absences = (
        # away across the first two kills
        Absence(
            "s311off", rng.randint(int(0.03 * total), at[0] - 1), rng.randint(at[1] + 1, at[2] - 1)
        ),
        # away across the last two kills, back before the end of the load
        Absence(
            "s5off", rng.randint(at[-3] + 1, at[-2] - 1), rng.randint(at[-1] + 1, int(0.97 * total))
        ),
    )
    paces = tuple(rng.uniform(0.002, 0.005) for _ in PUBLISHERS)
    return Plan(seed, total, kills, absences, paces)


Action = Literal["kill", "leave", "return"]


def schedule(plan: Plan, kills: bool) -> list[tuple[int, Action, int]]:
    """(acknowledgements, action, index into plan.kills or SUBSCRIBERS), in order."""
    events: list[tuple[int, Action, int]] = []
    if kills:
        events += [(k.after_acks, "kill", i) for i, k in enumerate(plan.kills)]
    names = [s.name for s in SUBSCRIBERS]
    for absence in plan.absences:
        index = names.index(absence.subscriber)
        events.append((absence.leave_at, "leave", index))
        events.append((absence.return_at, "return", index))
    events.sort(key=lambda e: (e[0], e[1] != "leave"))
    return events


# ---------------------------------------------------------------------- running it


@dataclass
class RunResult:
    plan: Plan
    kills_enabled: bool
    base: str
    broker: CrashBroker
    publishers: list[Publisher] = field(default_factory=list)
    subscribers: list[Subscriber] = field(default_factory=list)
    early_retained: dict[MsgKey, str] = field(default_factory=dict)
    retained_seen: list[Received] = field(default_factory=list)
    kills_done: int = 0
    in_flight_at_kills: list[int] = field(default_factory=list)
    final_exit_code: int | None = None
    timeline: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    suspects: dict[MsgKey, set[str]] = field(default_factory=dict)  # lost/doubled -> who
    started: float = field(default_factory=time.monotonic)

    def note(self, text: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.started:6.2f}s {text}")

    def progress(self) -> int:
        return sum(p.acked_count() for p in self.publishers) - len(self.early_retained)

    def clients(self) -> list[DurableClient]:
        return [*self.publishers, *self.subscribers]


def new_run(workdir: Path, seed: int, *, kills: bool) -> RunResult:
    """The plan and the (not yet started) broker of one run."""
    plan = make_plan(seed, load_total())
    return RunResult(plan, kills, f"crash/{uuid.uuid4().hex[:8]}", CrashBroker(workdir))


def run_scenario(result: RunResult) -> None:
    """Run the traffic (with or without kills) against a real broker. What the verification
    should judge is recorded, not raised; it raises only when the run cannot go on (a broker
    that does not start, a client that never connects)."""
    plan, base, broker, kills = result.plan, result.base, result.broker, result.kills_enabled
    tag = base[-8:]
    away: set[str] = set()
    try:
        broker.start()
        result.note(f"{broker.kind} incarnation 1 up on port {broker.port} (pid {broker.pid})")
        for sub_spec in SUBSCRIBERS:
            result.subscribers.append(
                Subscriber(
                    name=sub_spec.name,
                    client_id=f"{tag}-{sub_spec.name}",
                    version=sub_spec.version,
                    source=loopback_address(),
                    filters=tuple((f"{base}/{f}", q) for f, q in sub_spec.filters),
                    port=broker.port,
                    incarnation=broker.incarnation,
                )
            )
        for spec, pace in zip(PUBLISHERS, plan.paces, strict=True):
            result.publishers.append(
                Publisher(
                    name=spec.name,
                    client_id=f"{tag}-{spec.name}",
                    version=spec.version,
                    source=loopback_address(),
                    qos=spec.qos,
                    topic=f"{base}/load/q{spec.qos}/{spec.name}",
                    count=MESSAGES_PER_PUBLISHER,
                    pace=pace,
                    retain_prefix=f"{base}/retain/live",
                    retain_every=spec.retain_every,
                    port=broker.port,
                    incarnation=broker.incarnation,
                )
            )
        for client in result.clients():
            client.start()
        for client in result.clients():
            if not client.wait_connected(1, CONNECT_TIMEOUT):
                raise AssertionError(f"{client.name}: no CONNACK within {CONNECT_TIMEOUT}s")
        for sub in result.subscribers:
            granted = sub.subscribe(CONNECT_TIMEOUT)
            wanted = [q for _, q in sub.filters]
            if granted != wanted:
                raise AssertionError(f"{sub.name}: SUBACK {granted}, asked for {wanted}")
        _publish_early_retained(result)
        result.note("clients connected and subscribed, early retained messages acknowledged")

        deadline = time.monotonic() + LOAD_TIMEOUT
        for pub in result.publishers:
            pub.run_in_thread(deadline)
        stalled = False
        for threshold, action, index in schedule(plan, kills):
            if not _wait_until(_reached(result, threshold), result.progress, deadline):
                result.problems.append(
                    f"the load stalled at {result.progress()} of {plan.total} acknowledgements "
                    f"(no acknowledgement for {STALL_TIMEOUT}s, or past the {LOAD_TIMEOUT}s "
                    f"deadline; waiting for {threshold} to {action})"
                )
                result.problems.append(
                    "(a stalled broker also holds back deliveries and resends: LOST lines "
                    "below may be consequences of the stall)"
                )
                stalled = True
                break
            if action == "kill":
                _kill_and_restart(result, index, away)
            elif action == "leave":
                sub = result.subscribers[index]
                _wait_online(result, [sub], broker.incarnation.value, "before leaving")
                if not sub.go_offline(CONNECT_TIMEOUT):
                    result.problems.append(f"{sub.name}: clean disconnect did not complete")
                away.add(sub.name)
                result.note(f"{sub.name} disconnected at {result.progress()} acks")
            else:
                sub = result.subscribers[index]
                away.discard(sub.name)
                sub.start()
                result.note(f"{sub.name} reconnecting at {result.progress()} acks")
        for sub in result.subscribers:  # after a stall: bring back who is still away
            if sub.name in away:
                away.discard(sub.name)
                sub.start()
                result.note(f"{sub.name} reconnecting after the stall")

        if not stalled:
            _wait_load_done(result, deadline)
        _wait_delivered(result)
        time.sleep(SETTLE)
        _check_retained(result)
    finally:
        for pub in result.publishers:
            pub.halt()
        for client in result.clients():
            client.close()
        result.final_exit_code = broker.stop()
        result.note(f"broker stopped (exit {result.final_exit_code})")


def _publish_early_retained(result: RunResult) -> None:
    pub = result.publishers[0]
    mids: list[int] = []
    for i in range(EARLY_RETAINED):
        key, topic = ("early-retain", i), f"{result.base}/retain/early/{i}"
        result.early_retained[key] = topic
        mids.append(pub.publish(topic, key, 1, retain=True))
    for mid in mids:
        if pub.wait_acked(mid, CONNECT_TIMEOUT) is None:
            raise AssertionError(f"early retained message {mid} not acknowledged")


def _wait_until(done: Callable[[], bool], progress: Callable[[], int], deadline: float) -> bool:
    """Poll ``done`` until the deadline, or until ``progress`` stood still for STALL_TIMEOUT."""
    last, since = progress(), time.monotonic()
    while not done():
        now = time.monotonic()
        if now >= deadline:
            return False
        current = progress()
        if current != last:
            last, since = current, now
        elif now - since >= STALL_TIMEOUT:
            return False
        time.sleep(0.002)
    return True


def _reached(result: RunResult, threshold: int) -> Callable[[], bool]:
    return lambda: result.progress() >= threshold


def _has_all(sub: Subscriber, keys: set[MsgKey]) -> Callable[[], bool]:
    return lambda: not sub.missing(keys)


def _wait_online(
    result: RunResult, clients: Sequence[DurableClient], incarnation: int, why: str
) -> float:
    began = time.monotonic()
    deadline = began + RECONNECT_TIMEOUT
    for client in clients:
        if not client.wait_connected(incarnation, max(deadline - time.monotonic(), 0.0)):
            result.problems.append(
                f"{client.name} was not connected to broker incarnation {incarnation} within "
                f"{RECONNECT_TIMEOUT}s ({why})"
            )
    return time.monotonic() - began


def _kill_and_restart(result: RunResult, index: int, away: set[str]) -> None:
    point = result.plan.kills[index]
    broker = result.broker
    time.sleep(point.delay)
    in_flight = {p.name: p.unacked_count() for p in result.publishers}
    at, pid = result.progress(), broker.pid
    broker.kill9()
    result.kills_done += 1
    result.in_flight_at_kills.append(sum(in_flight.values()))
    result.note(f"kill #{index + 1}: SIGKILL pid {pid} at {at} acks, unacknowledged {in_flight}")
    time.sleep(point.downtime)
    broker.start()
    incarnation = broker.incarnation.value
    online = [c for c in result.clients() if c.name not in away]
    took = _wait_online(result, online, incarnation, f"after kill #{index + 1}")
    result.note(
        f"incarnation {incarnation} (pid {broker.pid}) up, {len(online)} clients back in "
        f"{took:.2f}s"
    )


def _wait_load_done(result: RunResult, deadline: float) -> None:
    _wait_until(lambda: all(p.all_acked() for p in result.publishers), result.progress, deadline)
    for pub in result.publishers:
        if not pub.all_acked():
            result.problems.append(
                f"{pub.name}: {pub.unacked_count()} publications still unacknowledged "
                f"(done publishing: {pub.done.is_set()})"
            )
    result.note(f"load done: {result.progress()} acknowledgements")


def _acknowledged(result: RunResult) -> tuple[dict[MsgKey, Published], dict[MsgKey, int]]:
    published: dict[MsgKey, Published] = {}
    acked: dict[MsgKey, int] = {}
    for pub in result.publishers:
        sent, ok, _refused = pub.outcome()
        published |= sent
        acked |= ok
    return published, acked


def _wait_delivered(result: RunResult) -> None:
    published, acked = _acknowledged(result)
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    for sub in result.subscribers:
        due = {k for k in acked if effective_qos(sub, published[k]) is not None}
        _wait_until(_has_all(sub, due), sub.received_count, deadline)
        missing = sub.missing(due)
        if missing:
            result.note(f"{sub.name}: {len(missing)} acknowledged messages still missing")
    result.note("delivery wait over")


def _check_retained(result: RunResult) -> None:
    """A fresh (clean) subscriber after the last restart must get every acknowledged retained
    message."""
    _published, acked = _acknowledged(result)
    live = {k for k in acked if k[0].endswith("-retain")}
    probe = Subscriber(
        name="retained-probe",
        client_id=f"{result.base[-8:]}-probe",
        version=V5,
        port=result.broker.port,
        source=loopback_address(),
        incarnation=result.broker.incarnation,
        filters=((f"{result.base}/retain/#", 1),),
        durable=False,
    )
    try:
        probe.start()
        if not probe.wait_connected(result.broker.incarnation.value, CONNECT_TIMEOUT):
            result.problems.append("retained probe: no CONNACK")
            return
        probe.subscribe(CONNECT_TIMEOUT)
        expected = set(result.early_retained) | live
        deadline = time.monotonic() + RETAINED_TIMEOUT
        _wait_until(_has_all(probe, expected), probe.received_count, deadline)
        time.sleep(0.3)
        result.retained_seen = probe.received()
    finally:
        probe.close()


# ---------------------------------------------------------------------- verification


def topic_matches(topic_filter: str, topic: str) -> bool:
    levels, names = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(levels):
        if level == "#":
            return True
        if i >= len(names) or (level != "+" and level != names[i]):
            return False
    return len(levels) == len(names)


def effective_qos(sub: Subscriber, message: Published) -> int | None:
    """The QoS the subscriber gets the message at (None: no filter of its matches)."""
    granted = [q for f, q in sub.filters if topic_matches(f, message.topic)]
    return min(message.qos, max(granted)) if granted else None


def _first(keys: Iterable[MsgKey]) -> str:
    ordered = sorted(keys)
    shown = ", ".join(f"{p}#{s}" for p, s in ordered[:SHOWN])
    return shown + (f" ... ({len(ordered)} in all)" if len(ordered) > SHOWN else "")


def verify(result: RunResult) -> list[str]:
    """Everything that must hold, as a list of problems (empty: the run passed)."""
    problems = list(result.problems)
    published, acked = _acknowledged(result)
    control = not result.kills_enabled
    for pub in result.publishers:
        _sent, _ok, refused = pub.outcome()
        if refused:
            problems.append(f"{pub.name}: PUBACK with a failure reason code for {_first(refused)}")
        problems += [f"{pub.name}: {fault}" for fault in pub.faults]
        problems += _check_client_conformance(pub)
    load_keys = {k for k, p in published.items() if not p.retain}
    unacked = load_keys - set(acked)
    if unacked:
        problems.append(f"publications never acknowledged: {_first(unacked)}")

    for sub in result.subscribers:
        problems += [f"{sub.name}: {fault}" for fault in sub.faults]
        problems += _check_subscriber(sub, published, acked, control, result.suspects)
    for client in result.clients():
        problems += _check_sessions(client)
    problems += _check_retained_result(result, acked)

    if result.kills_enabled:
        if result.kills_done != len(result.plan.kills):
            problems.append(f"only {result.kills_done} of {len(result.plan.kills)} kills happened")
        elif not any(result.in_flight_at_kills):
            problems.append("no kill landed while publications were in flight")
    if result.final_exit_code != 0:
        problems.append(f"the last broker incarnation exited with {result.final_exit_code}")
    return problems


def _check_subscriber(
    sub: Subscriber,
    published: dict[MsgKey, Published],
    acked: dict[MsgKey, int],
    control: bool,
    suspects: dict[MsgKey, set[str]],
) -> list[str]:
    problems: list[str] = []
    copies: dict[MsgKey, list[Received]] = defaultdict(list)
    strangers: list[str] = []
    wrong_qos: list[str] = []
    for rec in sub.received():
        message = published.get(rec.key) if rec.key is not None else None
        if message is None or message.topic != rec.topic:
            strangers.append(f"{rec.topic}: {rec.payload[:60]!r}")
            continue
        eff = effective_qos(sub, message)
        if eff is None:
            strangers.append(f"{rec.topic} (matches no filter): {rec.payload[:60]!r}")
            continue
        if rec.qos != eff:
            wrong_qos.append(f"{message.key[0]}#{message.key[1]} at QoS {rec.qos}, not {eff}")
        copies[message.key].append(rec)
    if strangers:
        problems.append(f"{sub.name}: received what was never published: {strangers[:SHOWN]}")
    if wrong_qos:
        problems.append(f"{sub.name}: wrong delivery QoS: {wrong_qos[:SHOWN]}")

    lost: list[MsgKey] = []
    doubled2: list[str] = []
    doubled1: list[str] = []
    for key, message in published.items():
        eff = effective_qos(sub, message)
        if eff is None:
            continue
        got = copies.get(key, [])
        if key in acked and not got:
            lost.append(key)
            suspects.setdefault(key, set()).add(sub.name)
        if len(got) > 1 and (eff == 2 or control):
            suspects.setdefault(key, set()).add(sub.name)
        if len(got) > 1:
            detail = (
                f"{key[0]}#{key[1]} x{len(got)} (dup flags {[int(r.dup) for r in got]}, "
                f"incarnations {[r.incarnation for r in got]})"
            )
            if eff == 2:
                doubled2.append(detail)
            elif control and not _legit_qos1_redelivery(sub, got):
                doubled1.append(detail)
    if lost:
        counts = Counter(k[0] for k in lost)
        problems.append(
            f"{sub.name}: LOST {len(lost)} acknowledged messages {dict(counts)}: {_first(lost)}"
        )
    if doubled2:
        problems.append(f"{sub.name}: QoS 2 DUPLICATES ({len(doubled2)}): {doubled2[:SHOWN]}")
    if doubled1:
        problems.append(
            f"{sub.name}: duplicates without a kill ({len(doubled1)}): {doubled1[:SHOWN]}"
        )
    return problems


_SENT_PUBREL: Final = re.compile(r"^Sending PUBREL \(Mid: (\d+)\)")
_SENT_PUBLISH: Final = re.compile(r"^Sending PUBLISH \(d(\d), q2, r\d, m(\d+)\)")


def _check_client_conformance(pub: Publisher) -> list[str]:
    """The harness's own client must not cause duplicates: once paho sent the PUBREL of a
    QoS 2 message it must never send that message's PUBLISH again ([MQTT-4.3.3-5]; see
    ``_ConformantClient``). Message ids are unique within a run (fewer than 65535)."""
    released: set[int] = set()
    bad: list[str] = []
    for line in pub.trace():
        if match := _SENT_PUBREL.match(line.text):
            released.add(int(match.group(1)))
        elif (match := _SENT_PUBLISH.match(line.text)) and int(match.group(2)) in released:
            bad.append(f"m{match.group(2)} (d{match.group(1)}, incarnation {line.incarnation})")
    if not bad:
        return []
    return [
        f"{pub.name}: CLIENT BUG, not the broker's: paho re-sent the PUBLISH of QoS 2 "
        f"messages after their PUBREL: {bad[:SHOWN]}"
    ]


def _legit_qos1_redelivery(sub: Subscriber, got: list[Received]) -> bool:
    """In the control run a QoS 1 copy may repeat only for a subscriber that disconnected
    (a PUBLISH that crossed its DISCONNECT is redelivered on its return), with DUP set."""
    went_offline = any(s.name == sub.name and s.goes_offline for s in SUBSCRIBERS)
    return went_offline and all(r.dup for r in got[1:])


def _check_sessions(client: DurableClient) -> list[str]:
    connacks = client.session_flags()
    if not connacks:
        return [f"{client.name}: never connected"]
    problems: list[str] = []
    first, later = connacks[0], connacks[1:]
    if first.reason_code != 0 or first.session_present:
        problems.append(
            f"{client.name}: first CONNACK rc={first.reason_code} "
            f"session_present={int(first.session_present)} (fresh data dir: expected 0)"
        )
    bad = [c for c in later if c.reason_code != 0 or not c.session_present]
    if bad:
        shown = [
            f"incarnation {c.incarnation}: rc={c.reason_code} sp={int(c.session_present)}"
            for c in bad[:SHOWN]
        ]
        problems.append(
            f"{client.name}: {len(bad)} of {len(later)} reconnections without "
            f"session present = 1: {shown}"
        )
    return problems


def _check_retained_result(result: RunResult, acked: dict[MsgKey, int]) -> list[str]:
    expected = set(result.early_retained) | {k for k in acked if k[0].endswith("-retain")}
    seen: dict[MsgKey, Received] = {}
    problems: list[str] = []
    for rec in result.retained_seen:
        if rec.key is None or not rec.retain:
            problems.append(
                f"retained probe got {rec.topic} {rec.payload[:60]!r} retain={rec.retain}"
            )
            continue
        seen[rec.key] = rec
    missing = expected - set(seen)
    if missing:
        problems.append(f"retained messages LOST: {_first(missing)}")
    published, _acked = _acknowledged(result)
    known = set(result.early_retained) | {k for k, p in published.items() if p.retain}
    unknown = set(seen) - known
    if unknown:
        problems.append(f"retained messages never published: {_first(unknown)}")
    return problems


def _mentions(packet_id: int) -> re.Pattern[str]:
    """paho's log lines about one packet id: "... m17), ..." or "(Mid: 17)"."""
    return re.compile(rf"\bm{packet_id}\)|\(Mid: {packet_id}\)")


def trace_of(result: RunResult, key: MsgKey) -> list[str]:
    """What paho logged about one message: at its publisher (all of its packet id's flow)
    and at every subscriber it is suspect for (the packets around each delivery)."""
    t0 = result.started
    lines = [f"== {key[0]}#{key[1]} (suspect at {sorted(result.suspects.get(key, ()))})"]
    for pub in result.publishers:
        mid = pub.mid_of(key)
        if mid is None:
            continue
        pattern = _mentions(mid)
        lines.append(f"-- publisher {pub.name}, message id {mid}")
        lines += [
            f"{t.at - t0:8.3f}s [inc {t.incarnation}] {t.text[:140]}"
            for t in pub.trace()
            if pattern.search(t.text)
        ]
    for sub in result.subscribers:
        if sub.name not in result.suspects.get(key, ()):
            continue
        got = [r for r in sub.received() if r.key == key]
        lines.append(
            f"-- subscriber {sub.name}: delivered {len(got)}x "
            + str([(f"{r.at - t0:.3f}s", f"inc {r.incarnation}", f"id {r.packet_id}") for r in got])
        )
        for rec in got:
            pattern = _mentions(rec.packet_id)
            lines += [
                f"{t.at - t0:8.3f}s [inc {t.incarnation}] {t.text[:140]}"
                for t in sub.trace()
                if abs(t.at - rec.at) < 2.0 and pattern.search(t.text)
            ]
    return lines


def write_trace(result: RunResult, path: Path, limit: int = 40) -> list[str]:
    """Write every suspect message's trace to ``path``; return the first one's."""
    keys = sorted(result.suspects)
    traces = [trace_of(result, key) for key in keys]
    text = [*result.timeline, ""]
    for trace in traces:
        text += [*trace, ""]
    path.write_text("\n".join(text))
    return traces[0][:limit] if traces else []


def report(result: RunResult, problems: Sequence[str], nodeid: str) -> str:
    kind = "kill -9 run" if result.kills_enabled else "control run (no kills)"
    verdict = "failed" if problems else "passed"
    lines = [
        f"{kind} {verdict} with seed {result.plan.seed} "
        f"(replay: BASTION_CRASH_SEED={result.plan.seed} pytest '{nodeid}')",
        result.plan.describe(),
        "--- problems ---",
        *(problems or ["none"]),
        "--- timeline ---",
        *result.timeline,
    ]
    if problems and result.suspects:
        path = result.broker.workdir / "suspects-trace.txt"
        lines += [
            f"--- paho trace of the first suspect message (all {len(result.suspects)}: {path}) ---",
            *write_trace(result, path),
        ]
    lines.append(result.broker.log_digest())
    return "\n".join(lines)
