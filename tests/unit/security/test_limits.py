"""Unit tests for ``bastion.security.limits``: token buckets, publish budgets, connection gate.

Time is a plain float passed in; rates and steps are powers of two where exact equality is
asserted, so no test depends on rounding.
"""

from __future__ import annotations

import math

import pytest

from bastion.errors import ConfigError
from bastion.mqtt.reason_codes import ReasonCode
from bastion.security.limits import (
    ADMITTED,
    ALLOWED,
    DEFAULT_GATE_LIMITS,
    DEFAULT_PROFILE,
    ClientRateLimiter,
    ConnectionGate,
    GateDecision,
    GateLimits,
    GateRefusal,
    LimitProfile,
    OverLimitAction,
    RateDecision,
    RateVerdict,
    TokenBucket,
    source_key,
)

# --- TokenBucket -----------------------------------------------------------------------------


def test_bucket_starts_full_and_refuses_past_burst() -> None:
    bucket = TokenBucket(rate=8.0, burst=4.0)
    assert [bucket.take(0.0) for _ in range(5)] == [True, True, True, True, False]
    assert bucket.available(0.0) == 0.0


def test_bucket_refills_lazily_at_rate() -> None:
    bucket = TokenBucket(rate=8.0, burst=4.0)
    for _ in range(4):
        assert bucket.take(10.0)
    assert bucket.available(10.125) == 1.0
    assert bucket.take(10.125)
    assert not bucket.take(10.125)
    assert bucket.available(10.5) == 3.0


def test_bucket_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=8.0, burst=4.0)
    assert bucket.take(0.0, 4.0)
    assert bucket.available(1000.0) == 4.0
    assert bucket.is_full(1000.0)


def test_first_call_fixes_the_start_not_time_zero() -> None:
    bucket = TokenBucket(rate=1.0, burst=2.0)
    assert bucket.take(500.0, 2.0)
    assert not bucket.take(500.5)
    assert bucket.take(501.0)


def test_failed_take_changes_nothing() -> None:
    bucket = TokenBucket(rate=4.0, burst=2.0)
    assert bucket.take(0.0, 1.5)
    assert not bucket.take(0.0, 1.0)
    assert bucket.available(0.0) == 0.5


def test_delay_until_available_is_exact_and_take_then_succeeds() -> None:
    bucket = TokenBucket(rate=4.0, burst=2.0)
    assert bucket.take(0.0, 2.0)
    assert bucket.delay_until_available(0.0, 1.0) == 0.25
    assert bucket.delay_until_available(0.0, 2.0) == 0.5
    assert bucket.delay_until_available(0.125, 1.0) == 0.125
    assert not bucket.take(0.2)
    assert bucket.take(0.25)
    assert bucket.delay_until_available(10.0, 1.0) == 0.0


def test_delay_then_take_with_inexact_rate() -> None:
    bucket = TokenBucket(rate=3.0, burst=7.0)
    assert bucket.take(0.0, 7.0)
    delay = bucket.delay_until_available(0.0, 1.0)
    assert delay == pytest.approx(1 / 3)
    assert bucket.take(delay)


def test_amount_over_burst_needs_a_full_bucket_and_leaves_debt() -> None:
    bucket = TokenBucket(rate=8.0, burst=4.0)
    assert bucket.take(0.0, 6.0)
    assert bucket.available(0.0) == -2.0
    assert bucket.delay_until_available(0.0, 1.0) == 0.375  # (1 - -2) / 8
    assert bucket.delay_until_available(0.0, 6.0) == 0.75  # needs a full bucket: (4 - -2) / 8
    assert not bucket.take(0.5, 6.0)
    assert bucket.take(0.75, 6.0)


def test_charge_goes_into_debt_and_reports_repayment_time() -> None:
    bucket = TokenBucket(rate=4.0, burst=2.0)
    assert bucket.charge(0.0, 1.0) == 0.0
    assert bucket.charge(0.0, 1.0) == 0.0
    assert bucket.charge(0.0, 1.0) == 0.25
    assert bucket.charge(0.0, 2.0) == 0.75
    assert bucket.available(0.75) == 0.0
    assert bucket.charge(0.75, 0.0) == 0.0


def test_clock_stepping_backwards_adds_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (math.inf, 1.0), (1.0, math.nan)],
)
def test_bucket_rejects_bad_parameters(rate: float, burst: float) -> None:
    with pytest.raises(ConfigError):
        TokenBucket(rate, burst)


@pytest.mark.parametrize("amount", [-1.0, math.nan, math.inf])
def test_bucket_rejects_bad_amounts(amount: float) -> None:
    bucket = TokenBucket(1.0, 1.0)
    with pytest.raises(ValueError, match="amount"):
        bucket.take(0.0, amount)
    with pytest.raises(ValueError, match="amount"):
        bucket.delay_until_available(0.0, amount)
    with pytest.raises(ValueError, match="amount"):
        bucket.charge(0.0, amount)


# --- ClientRateLimiter -------------------------------------------------------------------


def _messages_only(action: OverLimitAction) -> LimitProfile:
    return LimitProfile(
        messages_per_second=8.0, burst_messages=4.0, bytes_per_second=None, action=action
    )


def _bytes_only(action: OverLimitAction) -> LimitProfile:
    return LimitProfile(
        messages_per_second=None, bytes_per_second=1024.0, burst_bytes=2048.0, action=action
    )


def test_default_profile_is_the_documented_iot_budget() -> None:
    assert LimitProfile(100.0, 200.0, 1_048_576.0, 2_097_152.0) == DEFAULT_PROFILE
    assert DEFAULT_PROFILE.action is OverLimitAction.THROTTLE
    limiter = ClientRateLimiter()
    assert all(limiter.check_publish(0.0, 100) is ALLOWED for _ in range(200))
    decision = limiter.check_publish(0.0, 100)
    assert decision.verdict is RateVerdict.THROTTLE
    assert decision.delay == pytest.approx(0.01)
    assert decision.reason is ReasonCode.MESSAGE_RATE_TOO_HIGH


def test_throttle_admits_the_overdraft_and_paces_at_the_rate() -> None:
    limiter = ClientRateLimiter(_messages_only(OverLimitAction.THROTTLE))
    assert [limiter.check_publish(0.0, 10).verdict for _ in range(4)] == [RateVerdict.ALLOW] * 4
    assert limiter.check_publish(0.0, 10) == RateDecision(
        RateVerdict.THROTTLE, 0.125, ReasonCode.MESSAGE_RATE_TOO_HIGH
    )
    assert limiter.resume_after(0.0) == 0.125
    assert limiter.resume_after(0.125) == 0.0
    # A client that pauses as told gets exactly one message per 1/8 s.
    now, sent = 0.125, 0
    while now < 1.125:
        decision = limiter.check_publish(now, 10)
        assert decision.verdict is RateVerdict.THROTTLE
        assert decision.delay == 0.125
        sent += 1
        now += decision.delay
    assert sent == 8


def test_throttle_delay_grows_with_what_was_read_before_pausing() -> None:
    limiter = ClientRateLimiter(_messages_only(OverLimitAction.THROTTLE))
    decisions = [limiter.check_publish(0.0, 1) for _ in range(7)]
    assert [d.delay for d in decisions] == [0.0, 0.0, 0.0, 0.0, 0.125, 0.25, 0.375]
    assert limiter.resume_after(0.0) == 0.375


def test_throttle_on_bytes_names_quota_exceeded() -> None:
    limiter = ClientRateLimiter(_bytes_only(OverLimitAction.THROTTLE))
    assert limiter.check_publish(0.0, 1536) is ALLOWED
    assert limiter.check_publish(0.0, 1024) == RateDecision(
        RateVerdict.THROTTLE, 0.5, ReasonCode.QUOTA_EXCEEDED
    )


def test_throttle_reports_the_budget_with_the_longer_pause() -> None:
    profile = LimitProfile(
        messages_per_second=8.0, burst_messages=1.0, bytes_per_second=1024.0, burst_bytes=1024.0
    )
    limiter = ClientRateLimiter(profile)
    assert limiter.check_publish(0.0, 512) is ALLOWED
    small = limiter.check_publish(0.0, 512)  # messages owe 1/8 s, bytes owe nothing
    assert small == RateDecision(RateVerdict.THROTTLE, 0.125, ReasonCode.MESSAGE_RATE_TOO_HIGH)
    big = limiter.check_publish(0.125, 1024)  # bytes: 128 - 1024 owes 7/8 s; messages 1/8 s
    assert big == RateDecision(RateVerdict.THROTTLE, 0.875, ReasonCode.QUOTA_EXCEEDED)
    assert limiter.resume_after(0.125) == 0.875


def test_disconnect_refuses_without_charging() -> None:
    limiter = ClientRateLimiter(_messages_only(OverLimitAction.DISCONNECT))
    assert all(limiter.check_publish(0.0, 10) is ALLOWED for _ in range(4))
    refused = limiter.check_publish(0.0, 10)
    assert refused == RateDecision(RateVerdict.EXCEED, 0.0, ReasonCode.MESSAGE_RATE_TOO_HIGH)
    assert not refused.allowed
    assert limiter.check_publish(0.0, 10).verdict is RateVerdict.EXCEED
    assert limiter.check_publish(0.125, 10) is ALLOWED
    assert limiter.resume_after(0.125) == 0.0


def test_disconnect_on_bytes_is_quota_exceeded_and_spares_the_message_budget() -> None:
    profile = LimitProfile(
        messages_per_second=1.0,
        burst_messages=2.0,
        bytes_per_second=1024.0,
        burst_bytes=1024.0,
        action=OverLimitAction.DISCONNECT,
    )
    limiter = ClientRateLimiter(profile)
    assert limiter.check_publish(0.0, 1024) is ALLOWED
    assert limiter.check_publish(0.0, 1) == RateDecision(
        RateVerdict.EXCEED, reason=ReasonCode.QUOTA_EXCEEDED
    )
    # The refused publish did not spend a message token: one is still there once bytes refill.
    assert limiter.check_publish(1.0, 1) is ALLOWED


def test_disconnect_lets_one_oversized_publish_through_a_full_bucket() -> None:
    limiter = ClientRateLimiter(_bytes_only(OverLimitAction.DISCONNECT))
    assert limiter.check_publish(0.0, 4096) is ALLOWED  # 2048 - 4096: 2048 bytes in debt
    assert limiter.check_publish(2.0, 1).reason is ReasonCode.QUOTA_EXCEEDED  # debt repaid
    assert limiter.check_publish(3.0, 1) is ALLOWED


def test_none_switches_a_budget_off() -> None:
    limiter = ClientRateLimiter(
        LimitProfile(messages_per_second=None, bytes_per_second=None, burst_messages=1.0)
    )
    assert all(limiter.check_publish(0.0, 10_000_000) is ALLOWED for _ in range(10_000))
    assert limiter.resume_after(0.0) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"messages_per_second": 0.0},
        {"bytes_per_second": -5.0},
        {"burst_messages": 0.5},
        {"burst_bytes": math.inf},
        {"messages_per_second": math.nan},
    ],
)
def test_profile_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        LimitProfile(**kwargs)  # type: ignore[arg-type]


def test_action_parses_from_config_strings() -> None:
    assert OverLimitAction("throttle") is OverLimitAction.THROTTLE
    assert OverLimitAction("disconnect") is OverLimitAction.DISCONNECT


# --- source_key -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "prefix", "key"),
    [
        ("192.0.2.7", 64, "192.0.2.7"),
        ("::ffff:192.0.2.7", 64, "192.0.2.7"),
        ("2001:db8::1", 64, "2001:db8::/64"),
        ("2001:db8:0:0:ffff:ffff:ffff:ffff", 64, "2001:db8::/64"),
        ("2001:db8:0:1::1", 64, "2001:db8:0:1::/64"),
        ("2001:db8:abcd:1234::1", 48, "2001:db8:abcd::/48"),
        ("2001:DB8::1", 128, "2001:db8::1"),
        ("fe80::1%eth0", 128, "fe80::1"),
        ("fe80::1%eth0", 64, "fe80::/64"),
        ("unix:/run/bastion.sock", 64, "unix:/run/bastion.sock"),
        ("2001:db8::/64", 64, "2001:db8::/64"),
    ],
)
def test_source_key(ip: str, prefix: int, key: str) -> None:
    assert source_key(ip, prefix) == key


# --- ConnectionGate ---------------------------------------------------------------------------


def _gate(**kwargs: float) -> ConnectionGate:
    settings: dict[str, float] = {
        "connections_per_second_per_ip": 1000.0,
        "connection_burst_per_ip": 1000.0,
    }
    settings.update(kwargs)
    return ConnectionGate(GateLimits(**settings))  # type: ignore[arg-type]


def test_default_gate_limits() -> None:
    assert (
        GateLimits(
            connections_per_second_per_ip=20.0,
            connection_burst_per_ip=40.0,
            max_connections_per_ip=100,
            max_connections=100_000,
            max_idle_ips=100_000,
            ipv6_prefix=64,
        )
        == DEFAULT_GATE_LIMITS
    )
    gate = ConnectionGate()
    assert all(gate.admit("192.0.2.1", 0.0).admitted for _ in range(40))
    refused = gate.admit("192.0.2.1", 0.0)
    assert refused.refusal is GateRefusal.IP_CONNECTION_RATE
    assert refused.retry_after == pytest.approx(0.05)


def test_gate_rate_per_ip() -> None:
    gate = _gate(connections_per_second_per_ip=4.0, connection_burst_per_ip=2.0)
    assert gate.admit("192.0.2.1", 0.0) is ADMITTED
    assert gate.admit("192.0.2.1", 0.0) is ADMITTED
    refused = gate.admit("192.0.2.1", 0.0)
    assert refused == GateDecision(GateRefusal.IP_CONNECTION_RATE, 0.25)
    assert not refused.admitted
    assert refused.refusal is not None
    assert refused.refusal.reason_code is ReasonCode.CONNECTION_RATE_EXCEEDED
    assert gate.admit("192.0.2.2", 0.0).admitted  # another source is unaffected
    assert gate.admit("192.0.2.1", 0.25).admitted
    assert gate.active_connections == 4


def test_gate_concurrent_cap_per_ip() -> None:
    gate = _gate(max_connections_per_ip=2)
    assert gate.admit("192.0.2.1", 0.0).admitted
    assert gate.admit("192.0.2.1", 0.0).admitted
    refused = gate.admit("192.0.2.1", 0.0)
    assert refused.refusal is GateRefusal.IP_CONNECTIONS
    assert refused.refusal.reason_code is ReasonCode.QUOTA_EXCEEDED
    assert gate.connections_from("192.0.2.1") == 2
    gate.release("192.0.2.1")
    assert gate.connections_from("192.0.2.1") == 1
    assert gate.admit("192.0.2.1", 0.0).admitted


def test_gate_refused_attempts_still_cost_a_token() -> None:
    gate = _gate(
        connections_per_second_per_ip=1.0, connection_burst_per_ip=3.0, max_connections_per_ip=1
    )
    assert gate.admit("192.0.2.1", 0.0).admitted
    assert gate.admit("192.0.2.1", 0.0).refusal is GateRefusal.IP_CONNECTIONS
    assert gate.admit("192.0.2.1", 0.0).refusal is GateRefusal.IP_CONNECTIONS
    assert gate.admit("192.0.2.1", 0.0).refusal is GateRefusal.IP_CONNECTION_RATE


def test_gate_global_cap_creates_no_state() -> None:
    gate = _gate(max_connections=3)
    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.2"):
        assert gate.admit(ip, 0.0).admitted
    refused = gate.admit("192.0.2.9", 0.0)
    assert refused == GateDecision(GateRefusal.GLOBAL_CONNECTIONS)
    assert GateRefusal.GLOBAL_CONNECTIONS.reason_code is ReasonCode.SERVER_BUSY
    assert gate.tracked_sources == 2
    gate.release("192.0.2.2")
    assert gate.admit("192.0.2.9", 0.0).admitted
    assert gate.active_connections == 3


def test_gate_release_of_unknown_or_idle_source_is_ignored() -> None:
    gate = _gate()
    gate.release("192.0.2.1")
    assert gate.admit("192.0.2.1", 0.0).admitted
    gate.release("192.0.2.1")
    gate.release("192.0.2.1")
    assert gate.active_connections == 0
    assert gate.connections_from("192.0.2.1") == 0


def test_gate_groups_ipv6_by_prefix_and_unmaps_ipv4() -> None:
    gate = _gate(max_connections_per_ip=2)
    assert gate.admit("2001:db8::1", 0.0).admitted
    assert gate.admit("2001:db8::ffff", 0.0).admitted
    assert gate.admit("2001:db8::2", 0.0).refusal is GateRefusal.IP_CONNECTIONS
    assert gate.admit("2001:db8:0:1::1", 0.0).admitted
    assert gate.admit("::ffff:192.0.2.1", 0.0).admitted
    assert gate.connections_from("192.0.2.1") == 1
    gate.release("192.0.2.1")
    assert gate.connections_from("::ffff:192.0.2.1") == 0


def test_gate_forgets_least_recently_seen_idle_sources_beyond_the_bound() -> None:
    gate = _gate(max_idle_ips=3)
    assert gate.admit("192.0.2.100", 0.0).admitted  # stays open: never forgotten
    for n in range(1, 6):
        ip = f"192.0.2.{n}"
        assert gate.admit(ip, float(n)).admitted
        gate.release(ip)
    assert gate.tracked_sources == 4  # the busy one plus the three most recent idle ones
    assert gate.connections_from("192.0.2.100") == 1
    gate.release("192.0.2.100")
    assert gate.active_connections == 0
    assert gate.tracked_sources == 3


def test_gate_forgetting_an_idle_source_resets_its_rate() -> None:
    gate = _gate(connections_per_second_per_ip=1.0, connection_burst_per_ip=1.0, max_idle_ips=1)
    assert gate.admit("192.0.2.1", 0.0).admitted
    gate.release("192.0.2.1")
    assert gate.admit("192.0.2.1", 0.0).refusal is GateRefusal.IP_CONNECTION_RATE
    assert gate.admit("192.0.2.2", 0.0).admitted  # pushes 192.0.2.1 out of the idle table
    gate.release("192.0.2.2")
    assert gate.admit("192.0.2.1", 0.0).admitted


def test_gate_sweep_forgets_only_refilled_sources_oldest_first() -> None:
    gate = _gate(connections_per_second_per_ip=2.0, connection_burst_per_ip=4.0)
    for _ in range(4):
        assert gate.admit("192.0.2.1", 0.0).admitted
        gate.release("192.0.2.1")
    assert gate.admit("192.0.2.2", 1.0).admitted
    gate.release("192.0.2.2")
    assert gate.admit("192.0.2.3", 1.0).admitted  # still open at sweep time
    assert gate.sweep(1.5) == 0  # 192.0.2.1 has 3 of 4 tokens: the sweep stops there
    assert gate.sweep(2.0) == 2  # 192.0.2.1 full at 2.0; 192.0.2.2 full since 1.5
    assert gate.tracked_sources == 1
    assert gate.connections_from("192.0.2.3") == 1
    assert gate.sweep(100.0) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"connections_per_second_per_ip": 0.0},
        {"connection_burst_per_ip": 0.5},
        {"max_connections_per_ip": 0},
        {"max_connections": 0},
        {"max_idle_ips": 0},
        {"ipv6_prefix": 0},
        {"ipv6_prefix": 129},
    ],
)
def test_gate_limits_reject_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        GateLimits(**kwargs)  # type: ignore[arg-type]
