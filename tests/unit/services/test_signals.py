"""Simulated signals: physical ranges, seed determinism, anti-correlation and motion bursts."""

from __future__ import annotations

import itertools
import statistics
from datetime import UTC, datetime, timedelta

import pytest

from bastion.errors import ConfigError
from bastion.services.signals import (
    HUMIDITY_RANGE,
    TEMPERATURE_RANGE,
    HumiditySignal,
    MotionSignal,
    TemperatureSignal,
    epoch_seconds,
)

MIDNIGHT = datetime(2026, 11, 26, tzinfo=UTC)


def day(step_minutes: int = 5) -> list[datetime]:
    return [MIDNIGHT + timedelta(minutes=m) for m in range(0, 24 * 60, step_minutes)]


def test_temperature_stays_in_range_and_follows_the_day() -> None:
    signal = TemperatureSignal(mean=20.0, amplitude=5.0, noise=0.5, seed=1)
    samples = [signal.sample(t) for t in day()]
    assert all(TEMPERATURE_RANGE[0] <= v <= TEMPERATURE_RANGE[1] for v in samples)
    assert 13.0 < min(samples) < 16.5  # 15 +- noise (0.5 sd, 288 samples)
    assert 23.5 < max(samples) < 27.0
    assert signal.expected(MIDNIGHT + timedelta(hours=15)) == pytest.approx(25.0)
    assert signal.expected(MIDNIGHT + timedelta(hours=3)) == pytest.approx(15.0)


def test_temperature_is_clamped_even_with_absurd_settings() -> None:
    signal = TemperatureSignal(mean=55.0, amplitude=50.0, noise=10.0, seed=2)
    assert all(TEMPERATURE_RANGE[0] <= signal.sample(t) <= TEMPERATURE_RANGE[1] for t in day())


def test_same_seed_same_samples_other_seed_differs() -> None:
    times = day(30)
    signal = TemperatureSignal(seed=7)
    first = [signal.sample(t) for t in times]
    again = TemperatureSignal(seed=7)
    assert [again.sample(t) for t in times] == first
    other = TemperatureSignal(seed=8)
    assert [other.sample(t) for t in times] != first


def test_humidity_is_clamped_to_percent() -> None:
    signal = HumiditySignal(mean=50.0, slope=10.0, noise=5.0, seed=3)
    for temperature in (-40.0, -5.0, 0.0, 21.0, 40.0, 60.0):
        assert HUMIDITY_RANGE[0] <= signal.sample(temperature) <= HUMIDITY_RANGE[1]
    assert signal.expected(-40.0) == 100.0
    assert signal.expected(60.0) == 0.0
    assert signal.expected(float("nan")) == 50.0


def test_humidity_is_anti_correlated_with_temperature_over_a_day() -> None:
    temperature = TemperatureSignal(seed=4)
    humidity = HumiditySignal(seed=5)
    temps = [temperature.sample(t) for t in day()]
    humids = [humidity.sample(v) for v in temps]
    assert statistics.correlation(temps, humids) < -0.5


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        TemperatureSignal().sample(datetime(2026, 1, 1))
    assert epoch_seconds(MIDNIGHT) == MIDNIGHT.timestamp()


@pytest.mark.parametrize(
    "make",
    [
        lambda: TemperatureSignal(amplitude=-1.0),
        lambda: TemperatureSignal(noise=float("nan")),
        lambda: HumiditySignal(slope=-1.0),
        lambda: MotionSignal(bursts_per_hour=0.0),
        lambda: MotionSignal(events_per_burst=(5, 2)),
        lambda: MotionSignal(event_gap=(10.0, 1.0)),
    ],
)
def test_bad_settings_are_config_errors(make: object) -> None:
    assert callable(make)
    with pytest.raises(ConfigError):
        make()


def poll_day(signal: MotionSignal, hours: int = 24, step: float = 10.0) -> list[float]:
    events: list[float] = []
    signal.poll(MIDNIGHT)
    for i in range(1, int(hours * 3600 / step) + 1):
        events.extend(signal.poll(MIDNIGHT + timedelta(seconds=i * step)))
    return events


def test_motion_comes_in_bursts() -> None:
    events = poll_day(MotionSignal(bursts_per_hour=2.0, events_per_burst=(3, 8), seed=6))
    assert events == sorted(events)
    assert len(set(events)) == len(events)
    # ~48 bursts of 3-8 events in a day
    assert 48 * 3 * 0.5 < len(events) < 48 * 8 * 1.5
    gaps = [b - a for a, b in itertools.pairwise(events)]
    short = [g for g in gaps if g <= 15.0]
    assert len(short) > len(gaps) / 2  # most gaps are inside a burst...
    cv = statistics.stdev(gaps) / statistics.mean(gaps)
    assert cv > 1.5  # ...so the gaps vary far more than a Poisson stream's (cv = 1)


def test_motion_is_deterministic_and_poll_windows_partition_events() -> None:
    coarse = poll_day(MotionSignal(seed=9), hours=6, step=600.0)
    fine = poll_day(MotionSignal(seed=9), hours=6, step=600.0)
    assert coarse == fine
    start = epoch_seconds(MIDNIGHT)
    assert all(start < t <= start + 6 * 3600 for t in coarse)


def test_motion_first_poll_and_backwards_clock_give_nothing() -> None:
    signal = MotionSignal(bursts_per_hour=60.0, seed=10)
    assert signal.poll(MIDNIGHT) == []
    assert signal.poll(MIDNIGHT - timedelta(hours=1)) == []
    assert signal.poll(MIDNIGHT + timedelta(hours=1))


def test_motion_after_a_long_gap_is_bounded_to_a_day() -> None:
    signal = MotionSignal(bursts_per_hour=10.0, events_per_burst=(1, 1), seed=11)
    signal.poll(MIDNIGHT)
    later = MIDNIGHT + timedelta(days=365)
    events = signal.poll(later)
    assert events
    assert min(events) >= epoch_seconds(later) - 86_400
    assert len(events) < 10 * 24 * 2
