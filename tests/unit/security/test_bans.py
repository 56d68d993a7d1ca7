"""Unit tests for ``bastion.security.bans``: ban list, failure back-off, reconnect storms.

Every clock is a float argument: back-off sequences, ban thresholds, expiry and eviction are
asserted to the exact second.
"""

from __future__ import annotations

import pytest

from bastion.errors import ConfigError
from bastion.security.bans import (
    DEFAULT_AUTH_BACKOFF,
    DEFAULT_FLAP_LIMITS,
    AuthBackoff,
    AuthFailureTracker,
    Ban,
    BanKind,
    BanList,
    EventWindow,
    FailureOutcome,
    FlapDetector,
    FlapLimits,
)

IP = "192.0.2.10"
OTHER_IP = "192.0.2.20"

# --- BanList ------------------------------------------------------------------------------


def test_ban_holds_until_its_end_exclusive() -> None:
    bans = BanList()
    ban = bans.ban(BanKind.IP, IP, 100.0, "operator")
    assert ban == Ban(BanKind.IP, IP, 100.0, "operator")
    assert bans.is_banned(ip=IP, now=0.0) == ban
    assert bans.is_banned(ip=IP, now=99.5) == ban
    assert bans.is_banned(ip=IP, now=100.0) is None
    assert bans.is_banned(ip=OTHER_IP, now=0.0) is None


def test_each_kind_is_its_own_namespace() -> None:
    bans = BanList()
    bans.ban(BanKind.USERNAME, "mallory", 50.0, "r")
    assert bans.is_banned(client_id="mallory", now=0.0) is None
    assert bans.is_banned(ip="mallory", now=0.0) is None
    assert bans.get(BanKind.USERNAME, "mallory", 0.0) is not None


def test_is_banned_checks_ip_then_username_then_client_id() -> None:
    bans = BanList()
    by_client = bans.ban(BanKind.CLIENT_ID, "c1", 30.0, "client")
    by_user = bans.ban(BanKind.USERNAME, "u1", 20.0, "user")
    by_ip = bans.ban(BanKind.IP, IP, 10.0, "ip")
    assert bans.is_banned(ip=IP, username="u1", client_id="c1", now=0.0) == by_ip
    assert bans.is_banned(ip=IP, username="u1", client_id="c1", now=10.0) == by_user
    assert bans.is_banned(ip=IP, username="u1", client_id="c1", now=20.0) == by_client
    assert bans.is_banned(ip=IP, username="u1", client_id="c1", now=30.0) is None
    assert bans.is_banned(now=0.0) is None


def test_rebanning_keeps_the_later_end() -> None:
    bans = BanList()
    bans.ban(BanKind.IP, IP, 100.0, "first")
    kept = bans.ban(BanKind.IP, IP, 50.0, "shorter")
    assert kept == Ban(BanKind.IP, IP, 100.0, "first")
    extended = bans.ban(BanKind.IP, IP, 200.0, "longer")
    assert extended == Ban(BanKind.IP, IP, 200.0, "longer")
    assert len(bans) == 1
    assert bans.sweep(150.0) == []
    assert bans.sweep(200.0) == [extended]


def test_unban_returns_the_lifted_ban() -> None:
    bans = BanList()
    ban = bans.ban(BanKind.CLIENT_ID, "c1", 100.0, "r")
    assert bans.unban(BanKind.CLIENT_ID, "c1") == ban
    assert bans.unban(BanKind.CLIENT_ID, "c1") is None
    assert bans.is_banned(client_id="c1", now=0.0) is None
    assert bans.sweep(1000.0) == []


def test_ip_bans_cover_the_source_key() -> None:
    bans = BanList()
    ban = bans.ban(BanKind.IP, "2001:db8::5", 100.0, "r")
    assert ban.key == "2001:db8::/64"
    assert bans.is_banned(ip="2001:db8::ffff", now=0.0) == ban
    assert bans.is_banned(ip="2001:db8:0:1::5", now=0.0) is None
    v4 = bans.ban(BanKind.IP, "::ffff:192.0.2.1", 100.0, "r")
    assert v4.key == "192.0.2.1"
    assert bans.is_banned(ip="192.0.2.1", now=0.0) == v4
    assert bans.unban(BanKind.IP, "2001:db8::1") == ban
    exact = BanList(ipv6_prefix=128)
    assert exact.ban(BanKind.IP, "2001:db8::5", 1.0, "r").key == "2001:db8::5"
    assert exact.is_banned(ip="2001:db8::6", now=0.0) is None


def test_active_lists_bans_in_force_soonest_first() -> None:
    bans = BanList()
    late = bans.ban(BanKind.USERNAME, "u", 30.0, "r")
    early = bans.ban(BanKind.IP, IP, 10.0, "r")
    middle = bans.ban(BanKind.CLIENT_ID, "c", 20.0, "r")
    assert bans.active(0.0) == [early, middle, late]
    assert bans.active(10.0) == [middle, late]
    assert len(bans) == 3  # active() reports; only sweep() removes


def test_sweep_removes_and_returns_ended_bans_in_order() -> None:
    bans = BanList()
    first = bans.ban(BanKind.IP, IP, 10.0, "r")
    second = bans.ban(BanKind.IP, OTHER_IP, 20.0, "r")
    third = bans.ban(BanKind.USERNAME, "u", 30.0, "r")
    assert bans.sweep(5.0) == []
    assert bans.sweep(20.0) == [first, second]
    assert len(bans) == 1
    assert bans.sweep(20.0) == []
    assert bans.sweep(1e9) == [third]
    assert len(bans) == 0


def test_full_list_drops_the_ban_that_ends_first() -> None:
    bans = BanList(max_entries=3)
    bans.ban(BanKind.IP, "192.0.2.1", 300.0, "operator")
    bans.ban(BanKind.IP, "192.0.2.2", 100.0, "auto")
    bans.ban(BanKind.IP, "192.0.2.3", 200.0, "auto")
    bans.ban(BanKind.IP, "192.0.2.4", 150.0, "auto")
    assert len(bans) == 3
    assert bans.evicted == 1
    assert bans.is_banned(ip="192.0.2.2", now=0.0) is None
    assert [b.key for b in bans.active(0.0)] == ["192.0.2.4", "192.0.2.3", "192.0.2.1"]
    bans.ban(BanKind.IP, "192.0.2.1", 400.0, "extend")  # same key: nothing evicted
    assert bans.evicted == 1


def test_repeated_extensions_keep_the_expiry_index_small() -> None:
    bans = BanList()
    for n in range(1, 1001):
        bans.ban(BanKind.IP, IP, float(n), "r")
    assert len(bans._heap) <= 2 * len(bans) + 16  # stale index rows are compacted away
    assert bans.sweep(999.0) == []
    assert bans.sweep(1000.0) == [Ban(BanKind.IP, IP, 1000.0, "r")]


def test_ban_list_rejects_bad_bounds() -> None:
    with pytest.raises(ConfigError):
        BanList(max_entries=0)
    with pytest.raises(ConfigError):
        BanList(ipv6_prefix=0)


# --- EventWindow ---------------------------------------------------------------------------


def test_event_window_counts_recent_events_up_to_capacity() -> None:
    window = EventWindow(3)
    assert len(window) == 0
    assert window.latest() == float("-inf")
    assert window.count(0.0, 10.0) == 0
    for t in (1.0, 2.0, 3.0, 4.0):
        window.add(t, 10.0)
    assert len(window) == 3  # the event at 1.0 fell out: capacity
    assert window.latest() == 4.0
    assert window.count(4.0, 10.0) == 3
    assert window.count(4.0, 2.0) == 2  # strictly after 2.0: 3.0 and 4.0
    assert window.count(14.0, 10.0) == 0
    window.add(13.0, 10.0)  # 2.0 and 3.0 are at or before 13 - 10: dropped
    assert len(window) == 2
    assert window.count(13.0, 10.0) == 2
    window.add(30.0, 10.0)
    assert len(window) == 1
    window.clear()
    assert len(window) == 0
    window.add(5.0, 1.0)
    assert window.count(5.0, 1.0) == 1


# --- AuthBackoff / AuthFailureTracker -----------------------------------------------------


def test_default_backoff_sequence() -> None:
    assert (
        AuthBackoff(
            initial_delay=0.5,
            multiplier=2.0,
            max_delay=30.0,
            ban_after=10,
            window=600.0,
            ban_duration=900.0,
            ban_usernames=True,
            max_tracked=100_000,
        )
        == DEFAULT_AUTH_BACKOFF
    )
    delays = [DEFAULT_AUTH_BACKOFF.delay_for(n) for n in range(10)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert DEFAULT_AUTH_BACKOFF.delay_for(10**9) == 30.0
    assert AuthBackoff(multiplier=1.0).delay_for(10**9) == 0.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_delay": 0.0},
        {"multiplier": 0.5},
        {"max_delay": 0.25},
        {"ban_after": 0},
        {"window": -1.0},
        {"ban_duration": float("inf")},
        {"max_tracked": 0},
    ],
)
def test_backoff_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        AuthBackoff(**kwargs)  # type: ignore[arg-type]


def test_failures_back_off_exponentially_then_ban_the_ip() -> None:
    bans = BanList()
    tracker = AuthFailureTracker(bans)
    now = 0.0
    delays = []
    for _ in range(9):
        outcome = tracker.record_failure(IP, None, now)
        assert outcome.banned_until is None
        assert outcome.new_bans == ()
        delays.append(outcome.delay)
        now += outcome.delay  # the attacker retries as soon as the CONNACK arrives
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert now == 121.5
    tenth = tracker.record_failure(IP, None, now)
    ban = Ban(BanKind.IP, IP, 1021.5, "10 authentication failures in 600 s")
    assert tenth == FailureOutcome(30.0, 1021.5, (ban,))
    assert bans.is_banned(ip=IP, now=1021.0) == ban
    assert bans.is_banned(ip=IP, now=1021.5) is None
    assert tracker.failures(now, ip=IP) == 0  # counting starts afresh after a ban


def test_connack_delay_is_the_back_off_still_owed() -> None:
    tracker = AuthFailureTracker(BanList())
    assert tracker.connack_delay(IP, "alice", 0.0) == 0.0
    assert tracker.record_failure(IP, "alice", 10.0).delay == 0.5
    assert tracker.connack_delay(IP, None, 10.25) == 0.25
    assert tracker.connack_delay(OTHER_IP, "alice", 10.25) == 0.25  # the username owes it too
    assert tracker.connack_delay(OTHER_IP, "bob", 10.25) == 0.0
    assert tracker.connack_delay(IP, "alice", 10.5) == 0.0
    # A second failure before the first back-off ended: the next one is 1 s from now.
    tracker.record_failure(IP, "alice", 10.5)
    assert tracker.connack_delay(IP, "alice", 10.5) == 1.0


def test_back_off_never_moves_earlier() -> None:
    tracker = AuthFailureTracker(BanList(), AuthBackoff(window=10.0))
    for t in range(7):
        tracker.record_failure(IP, None, float(t))
    assert tracker.connack_delay(IP, None, 6.0) == 30.0
    # Failures at 0..6 have left the 10 s window: this one counts as the first (0.5 s),
    # but the 30 s already owed stands.
    outcome = tracker.record_failure(IP, None, 17.0)
    assert outcome.delay == 19.0
    assert tracker.failures(17.0, ip=IP) == 1


def test_usernames_back_off_and_ban_across_ips() -> None:
    bans = BanList()
    tracker = AuthFailureTracker(bans)
    outcomes = [tracker.record_failure(f"192.0.2.{n}", "admin", float(n)) for n in range(10)]
    assert [o.delay for o in outcomes[:4]] == [0.5, 1.0, 2.0, 4.0]
    last = outcomes[-1]
    assert last.new_bans == (
        Ban(BanKind.USERNAME, "admin", 909.0, "10 authentication failures in 600 s"),
    )
    assert last.banned_until == 909.0
    assert bans.is_banned(username="admin", now=0.0) is not None
    assert all(bans.is_banned(ip=f"192.0.2.{n}", now=9.0) is None for n in range(10))


def test_ip_and_username_bans_together() -> None:
    bans = BanList()
    tracker = AuthFailureTracker(bans, AuthBackoff(ban_after=2, ban_duration=60.0))
    tracker.record_failure(IP, "admin", 0.0)
    outcome = tracker.record_failure(IP, "admin", 1.0)
    reason = "2 authentication failures in 600 s"
    assert outcome.new_bans == (
        Ban(BanKind.IP, IP, 61.0, reason),
        Ban(BanKind.USERNAME, "admin", 61.0, reason),
    )
    assert outcome.delay == 1.0
    assert outcome.banned_until == 61.0


def test_username_bans_can_be_turned_off() -> None:
    bans = BanList()
    tracker = AuthFailureTracker(bans, AuthBackoff(ban_after=3, ban_usernames=False))
    outcomes = [tracker.record_failure(f"192.0.2.{n}", "admin", float(n)) for n in range(5)]
    assert all(o.new_bans == () for o in outcomes)
    assert [o.delay for o in outcomes] == [0.5, 1.0, 2.0, 2.0, 2.0]  # ring holds 3 failures
    assert bans.is_banned(username="admin", now=5.0) is None


def test_failures_outside_the_window_do_not_add_up() -> None:
    bans = BanList()
    tracker = AuthFailureTracker(bans, AuthBackoff(window=60.0, ban_after=3))
    outcomes = [tracker.record_failure(IP, None, 60.0 * n) for n in range(10)]
    assert {o.delay for o in outcomes} == {0.5}
    assert len(bans) == 0
    tracker.record_failure(IP, None, 599.5)  # 59.5 s after the one at 540
    assert tracker.failures(599.5, ip=IP) == 2
    assert tracker.failures(600.0, ip=IP) == 1  # exactly 60 s old: out of the window
    assert tracker.record_failure(IP, None, 599.75).new_bans != ()


def test_success_clears_the_username_and_the_ip_wait_but_not_the_ip_count() -> None:
    bans = BanList()
    tracker = AuthFailureTracker(bans)
    for t in range(9):
        tracker.record_failure(IP, "alice", float(t))
    assert tracker.failures(9.0, username="alice") == 9
    tracker.record_success(IP, "alice")
    assert tracker.failures(9.0, username="alice") == 0
    assert tracker.connack_delay(IP, "alice", 9.0) == 0.0
    assert tracker.failures(9.0, ip=IP) == 9
    # One valid credential does not buy the attacker a fresh count for this IP.
    outcome = tracker.record_failure(IP, "bob", 9.0)
    assert [b.kind for b in outcome.new_bans] == [BanKind.IP]
    tracker.record_success(OTHER_IP, None)  # unknown: nothing to do


def test_failure_reports_an_existing_ban() -> None:
    bans = BanList()
    bans.ban(BanKind.IP, IP, 500.0, "operator")
    outcome = AuthFailureTracker(bans).record_failure(IP, None, 0.0)
    assert outcome == FailureOutcome(0.5, 500.0, ())


def test_failure_tracker_tables_are_bounded_lru() -> None:
    tracker = AuthFailureTracker(BanList(), AuthBackoff(max_tracked=2))
    tracker.record_failure("192.0.2.1", "u1", 0.0)
    tracker.record_failure("192.0.2.2", "u2", 1.0)
    tracker.record_failure("192.0.2.1", "u1", 2.0)  # refreshes 192.0.2.1 and u1
    tracker.record_failure("192.0.2.3", "u3", 3.0)
    assert tracker.tracked == (2, 2)
    assert tracker.failures(3.0, ip="192.0.2.2") == 0
    assert tracker.failures(3.0, username="u2") == 0
    assert tracker.failures(3.0, ip="192.0.2.1") == 2
    assert tracker.failures(3.0, username="u1") == 2
    assert tracker.failures(3.0) == 0


def test_failure_tracker_sweep_drops_quiet_records() -> None:
    tracker = AuthFailureTracker(BanList(), AuthBackoff(window=60.0))
    tracker.record_failure("192.0.2.1", "u1", 0.0)
    tracker.record_failure("192.0.2.2", None, 30.0)
    assert tracker.sweep(59.9) == 0
    assert tracker.sweep(60.0) == 2  # 192.0.2.1 and u1
    assert tracker.tracked == (1, 0)
    assert tracker.sweep(90.0) == 1
    assert tracker.tracked == (0, 0)


def test_failure_tracker_sweep_keeps_records_still_owed_a_back_off() -> None:
    tracker = AuthFailureTracker(BanList(), AuthBackoff(window=5.0, max_delay=30.0))
    for t in range(7):
        tracker.record_failure(IP, None, float(t))  # 7th failure: 30 s owed until 36
    assert tracker.sweep(35.0) == 0
    assert tracker.sweep(36.0) == 1


def test_failure_tracker_groups_ipv6_sources() -> None:
    bans = BanList()
    tracker = AuthFailureTracker(bans, AuthBackoff(ban_after=3))
    for n in range(3):
        tracker.record_failure(f"2001:db8::{n + 1}", None, float(n))
    ban = bans.is_banned(ip="2001:db8::abcd", now=3.0)
    assert ban is not None
    assert ban.key == "2001:db8::/64"


# --- FlapDetector --------------------------------------------------------------------------


def test_default_flap_limits() -> None:
    assert (
        FlapLimits(
            max_connects_per_client=20,
            max_connects_per_ip=100,
            window=60.0,
            ban_duration=300.0,
            max_tracked=100_000,
        )
        == DEFAULT_FLAP_LIMITS
    )


def test_more_than_twenty_connects_in_a_minute_bans_the_client_id() -> None:
    bans = BanList()
    flaps = FlapDetector(bans)
    for n in range(20):
        assert flaps.record_connect("sensor-7", IP, 2.0 * n) == ()
    ban = Ban(BanKind.CLIENT_ID, "sensor-7", 339.0, "more than 20 connections in 60 s")
    assert flaps.record_connect("sensor-7", IP, 39.0) == (ban,)
    assert bans.is_banned(client_id="sensor-7", now=338.0) == ban
    assert bans.is_banned(ip=IP, now=39.0) is None


def test_connects_spread_over_more_than_the_window_are_fine() -> None:
    flaps = FlapDetector(BanList())
    for n in range(20):
        assert flaps.record_connect("sensor-7", IP, float(n)) == ()
    assert flaps.record_connect("sensor-7", IP, 60.0) == ()  # the one at 0.0 has aged out
    assert flaps.record_connect("sensor-7", IP, 60.5) != ()  # 1.0 .. 60.5: 21 in 60 s


def test_many_client_ids_from_one_source_ban_the_source() -> None:
    bans = BanList()
    flaps = FlapDetector(bans)
    for n in range(100):
        assert flaps.record_connect(f"dev-{n}", IP, n * 0.5) == ()
    bans_now = flaps.record_connect("dev-100", IP, 50.0)
    assert bans_now == (Ban(BanKind.IP, IP, 350.0, "more than 100 connections in 60 s"),)


def test_client_and_source_bans_together_and_counting_restarts() -> None:
    bans = BanList()
    flaps = FlapDetector(bans, FlapLimits(max_connects_per_client=2, max_connects_per_ip=2))
    flaps.record_connect("c1", IP, 0.0)
    flaps.record_connect("c1", IP, 1.0)
    triggered = flaps.record_connect("c1", IP, 2.0)
    assert [(b.kind, b.key, b.until) for b in triggered] == [
        (BanKind.CLIENT_ID, "c1", 302.0),
        (BanKind.IP, IP, 302.0),
    ]
    assert flaps.record_connect("c1", IP, 400.0) == ()


def test_empty_client_ids_are_not_counted_by_id() -> None:
    flaps = FlapDetector(BanList(), FlapLimits(max_connects_per_client=1))
    assert flaps.record_connect("", IP, 0.0) == ()
    assert flaps.record_connect(None, IP, 0.0) == ()
    assert flaps.tracked == (0, 1)


def test_flap_detector_groups_ipv6_sources() -> None:
    bans = BanList()
    flaps = FlapDetector(bans, FlapLimits(max_connects_per_ip=2))
    flaps.record_connect(None, "2001:db8::1", 0.0)
    flaps.record_connect(None, "2001:db8::2", 0.0)
    (ban,) = flaps.record_connect(None, "2001:db8::3", 0.0)
    assert ban.key == "2001:db8::/64"


def test_flap_tables_are_bounded_and_swept() -> None:
    flaps = FlapDetector(BanList(), FlapLimits(max_tracked=2, window=60.0))
    flaps.record_connect("a", "192.0.2.1", 0.0)
    flaps.record_connect("b", "192.0.2.2", 10.0)
    flaps.record_connect("c", "192.0.2.3", 20.0)
    assert flaps.tracked == (2, 2)
    assert flaps.sweep(70.0) == 2  # b and 192.0.2.2
    assert flaps.tracked == (1, 1)
    assert flaps.sweep(80.0) == 2
    assert flaps.tracked == (0, 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_connects_per_client": 0},
        {"max_connects_per_ip": 0},
        {"window": 0.0},
        {"ban_duration": -1.0},
        {"max_tracked": 0},
    ],
)
def test_flap_limits_reject_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        FlapLimits(**kwargs)  # type: ignore[arg-type]
