"""Property tests for ``security.limits``, ``bans`` and ``audit``: bounds hold for any input.

Token buckets never let through more than ``burst + rate * elapsed``; the gate, ban list and
event window agree with naive models; the audit trail never loses an event from its counts.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.security.audit import AuditTrail, SecurityEvent, SecurityEventKind
from bastion.security.bans import BanKind, BanList, EventWindow
from bastion.security.limits import (
    ClientRateLimiter,
    ConnectionGate,
    GateLimits,
    GateRefusal,
    LimitProfile,
    OverLimitAction,
    RateVerdict,
    TokenBucket,
)

PROPS = settings(max_examples=200, deadline=None)

rates = st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False)
bursts = st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False)
steps = st.floats(min_value=0.0, max_value=100.0, allow_nan=False, allow_infinity=False)
fractions = st.floats(min_value=0.0, max_value=1.5, allow_nan=False, allow_infinity=False)
starts = st.sampled_from([0.0, 12_345.678, 3.2e6])  # monotonic clocks start anywhere


def _tolerance(*magnitudes: float) -> float:
    return 1e-6 * max(1.0, *magnitudes)


@PROPS
@given(rates, bursts, starts, st.lists(st.tuples(steps, fractions), min_size=1, max_size=40))
def test_bucket_never_exceeds_burst_plus_refill_over_any_interval(
    rate: float, burst: float, start: float, takes: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(rate, burst)
    now = start
    granted: list[tuple[float, float]] = []
    largest = 0.0
    for step, fraction in takes:
        now += step
        amount = fraction * burst  # up to 1.5 bursts: oversized amounts included
        if bucket.take(now, amount):
            granted.append((now, amount))
            largest = max(largest, amount)
    overshoot = max(0.0, largest - burst)  # one oversized take may leave the bucket in debt
    for i, j in itertools.combinations_with_replacement(range(len(granted)), 2):
        start, end = granted[i][0], granted[j][0]
        total = sum(amount for _, amount in granted[i : j + 1])
        bound = burst + rate * (end - start) + overshoot
        assert total <= bound + _tolerance(bound)


@PROPS
@given(rates, bursts, st.lists(st.tuples(steps, fractions), min_size=1, max_size=40))
def test_bucket_within_burst_obeys_the_exact_bound(
    rate: float, burst: float, takes: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(rate, burst)
    now, total = 0.0, 0.0
    for step, fraction in takes:
        now += step
        amount = min(fraction, 1.0) * burst
        if bucket.take(now, amount):
            total += amount
    bound = burst + rate * now
    assert total <= bound + _tolerance(bound)


@PROPS
@given(rates, bursts, starts, st.lists(st.tuples(steps, fractions), min_size=1, max_size=40))
def test_take_succeeds_exactly_when_no_delay_is_owed(
    rate: float, burst: float, start: float, takes: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(rate, burst)
    now = start
    for step, fraction in takes:
        now += step
        amount = fraction * burst
        delay = bucket.delay_until_available(now, amount)
        assert delay >= 0.0
        assert bucket.take(now, amount) == (delay == 0.0)
        if delay > 0.0:
            assert bucket.take(now + delay, amount)  # waiting as told always suffices
            now += delay


@PROPS
@given(
    st.sampled_from([1.0, 10.0, 100.0]),
    st.sampled_from([1.0, 5.0, 200.0]),
    st.lists(st.integers(min_value=0, max_value=2000), min_size=1, max_size=200),
)
def test_throttled_client_that_obeys_pauses_is_held_to_its_rate(
    rate: float, burst: float, sizes: list[int]
) -> None:
    limiter = ClientRateLimiter(
        LimitProfile(
            messages_per_second=rate,
            burst_messages=burst,
            bytes_per_second=1000.0 * rate,
            burst_bytes=1000.0 * burst,
        )
    )
    now, sent, sent_bytes = 0.0, 0, 0
    for size in sizes:
        decision = limiter.check_publish(now, size)
        assert decision.verdict is not RateVerdict.EXCEED
        sent += 1
        sent_bytes += size
        now += decision.delay
    # Everything read was admitted; pausing kept it within one message of the budget.
    assert sent <= burst + rate * now + 1 + 1e-6
    assert sent_bytes <= 1000.0 * (burst + rate * now) + max(sizes) + 1e-3


@PROPS
@given(
    st.sampled_from([1.0, 10.0, 100.0]),
    st.sampled_from([1.0, 5.0, 200.0]),
    st.lists(st.tuples(steps, st.integers(min_value=0, max_value=500)), max_size=200),
)
def test_disconnect_mode_allows_no_more_than_the_budget(
    rate: float, burst: float, publishes: list[tuple[float, int]]
) -> None:
    limiter = ClientRateLimiter(
        LimitProfile(
            messages_per_second=rate,
            burst_messages=burst,
            bytes_per_second=1000.0 * rate,
            burst_bytes=1000.0 * burst,
            action=OverLimitAction.DISCONNECT,
        )
    )
    now, allowed = 0.0, 0
    for step, size in publishes:
        now += step / 100
        decision = limiter.check_publish(now, size)
        assert decision.verdict is not RateVerdict.THROTTLE
        allowed += decision.allowed
    assert allowed <= burst + rate * now + 1e-6


IPS = [f"192.0.2.{n}" for n in range(6)]


@PROPS
@given(
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=1, max_value=3),
    st.lists(st.tuples(st.booleans(), st.sampled_from(IPS)), max_size=120),
)
def test_gate_counts_agree_with_a_naive_model(
    per_ip: int, total: int, idle: int, operations: list[tuple[bool, str]]
) -> None:
    gate = ConnectionGate(
        GateLimits(
            connections_per_second_per_ip=1e9,
            connection_burst_per_ip=1e9,
            max_connections_per_ip=per_ip,
            max_connections=total,
            max_idle_ips=idle,
        )
    )
    model: Counter[str] = Counter()
    for connect, ip in operations:
        if connect:
            decision = gate.admit(ip, 0.0)
            if sum(model.values()) >= total:
                assert decision.refusal is GateRefusal.GLOBAL_CONNECTIONS
            elif model[ip] >= per_ip:
                assert decision.refusal is GateRefusal.IP_CONNECTIONS
            else:
                assert decision.admitted
                model[ip] += 1
        else:
            gate.release(ip)
            if model[ip]:
                model[ip] -= 1
        assert gate.active_connections == sum(model.values())
        assert all(gate.connections_from(ip) == model[ip] for ip in IPS)
        busy = sum(1 for n in model.values() if n)
        assert busy <= gate.tracked_sources <= busy + idle


KINDS = list(BanKind)
KEYS = ["a", "b", "c"]


@PROPS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ban", "unban", "sweep", "check"]),
            st.sampled_from(KINDS),
            st.sampled_from(KEYS),
            st.integers(min_value=0, max_value=20),
        ),
        max_size=80,
    )
)
def test_ban_list_agrees_with_a_naive_model(
    operations: list[tuple[str, BanKind, str, int]],
) -> None:
    bans = BanList()
    model: dict[tuple[BanKind, str], float] = {}
    now = 0.0
    for op, kind, key, value in operations:
        if op == "ban":
            ban = bans.ban(kind, key, now + value, "r")
            model[kind, key] = max(model.get((kind, key), -1.0), now + value)
            assert ban.until == model[kind, key]
        elif op == "unban":
            removed = bans.unban(kind, key)
            assert (removed is not None) == ((kind, key) in model)
            model.pop((kind, key), None)
        elif op == "sweep":
            now += value / 4
            ended = bans.sweep(now)
            expected = {slot for slot, until in model.items() if until <= now}
            assert {(b.kind, b.key) for b in ended} == expected
            assert [b.until for b in ended] == sorted(b.until for b in ended)
            for slot in expected:
                del model[slot]
        else:
            got = bans.get(kind, key, now)
            until = model.get((kind, key))
            assert (got is not None) == (until is not None and until > now)
        assert len(bans) == len(model)
        assert len(bans._heap) <= 2 * len(bans) + 16 + 1


@PROPS
@given(
    st.integers(min_value=1, max_value=4),
    st.lists(st.tuples(st.integers(0, 3), st.sampled_from(KEYS)), max_size=60),
)
def test_full_ban_list_stays_bounded(capacity: int, operations: list[tuple[int, str]]) -> None:
    bans = BanList(max_entries=capacity)
    for n, (length, key) in enumerate(operations):
        bans.ban(BanKind.CLIENT_ID, f"{key}{n % 7}", float(length), "r")
        assert len(bans) <= capacity


@PROPS
@given(
    st.integers(min_value=1, max_value=6),
    st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), max_size=40),
    st.floats(min_value=0.01, max_value=20, allow_nan=False),
)
def test_event_window_counts_like_a_list(capacity: int, gaps: list[float], span: float) -> None:
    window = EventWindow(capacity)
    times: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        window.add(now, span)
        times.append(now)
        recent = [t for t in times[-capacity:] if t > now - span]
        assert window.count(now, span) == len(recent)
        assert len(window) == len(recent)
        assert window.latest() == now


AUDIT_KINDS = [
    SecurityEventKind.AUTH_FAILURE,
    SecurityEventKind.ACL_DENIED,
    SecurityEventKind.RATE_LIMITED,
]


@PROPS
@given(
    st.integers(min_value=1, max_value=4),
    st.lists(
        st.tuples(
            st.sampled_from(AUDIT_KINDS),
            st.sampled_from(["192.0.2.1", "192.0.2.2", "192.0.2.3"]),
            st.sampled_from(["u1", "u2", None]),
            st.floats(min_value=0, max_value=4, allow_nan=False),
            st.booleans(),
        ),
        max_size=150,
    ),
)
def test_audit_trail_accounts_for_every_event(
    max_groups: int,
    events: list[tuple[SecurityEventKind, str, str | None, float, bool]],
) -> None:
    trail = AuditTrail(window=10.0, max_groups=max_groups)
    now = 0.0
    written: Counter[str] = Counter()
    for kind, ip, username, gap, flush in events:
        now += gap
        records = trail.record(SecurityEvent(kind, ip=ip, username=username), now)
        if flush:
            records += trail.flush(now)
        for record in records:
            written[record.event.kind.value] += record.count
            assert 0.0 <= record.window <= 10.0
    for record in trail.drain(now):
        written[record.event.kind.value] += record.count
    counters = trail.counters()
    assert sum(counters.values()) == len(events)
    assert all(written[kind.value] == counters[kind.value] for kind in AUDIT_KINDS)


@PROPS
@given(
    rates,
    st.floats(min_value=1, max_value=1e4),
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=2), st.lists(st.integers(0, 5000), max_size=8)),
        max_size=12,
    ),
)
def test_batch_charge_is_the_same_as_one_by_one(
    rate: float, burst: float, reads: list[tuple[float, list[int]]]
) -> None:
    """``take_batch`` succeeds exactly when every publish one by one would be ALLOWed, and
    then leaves both buckets as the one-by-one charges would."""
    profile = LimitProfile(
        messages_per_second=rate,
        burst_messages=burst,
        bytes_per_second=rate * 100,
        burst_bytes=burst * 100,
    )
    batch, single = ClientRateLimiter(profile), ClientRateLimiter(profile)
    now = 0.0
    for step, sizes in reads:
        now += step
        if batch.take_batch(now, len(sizes), sum(sizes)):
            for size in sizes:
                assert single.check_publish(now, size).verdict is RateVerdict.ALLOW
        else:  # refused as a whole: the caller charges one by one, as ``single`` does
            for size in sizes:
                assert batch.check_publish(now, size) == single.check_publish(now, size)
        assert batch.resume_after(now) == pytest.approx(single.resume_after(now), abs=1e-6)
