"""Simulated sensor signals: a daily temperature curve, humidity that follows it, motion bursts.

Pure and seeded (``random.Random(seed)``): time is always an argument, never read here.
``readings.py`` turns the values into payloads; the simulator clients publish them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime

from bastion.errors import ConfigError

__all__ = [
    "HUMIDITY_RANGE",
    "TEMPERATURE_RANGE",
    "HumiditySignal",
    "MotionProfile",
    "MotionSignal",
    "TemperatureSignal",
    "epoch_seconds",
]

SECONDS_PER_DAY = 86_400.0
TEMPERATURE_RANGE = (-40.0, 60.0)  # what a cheap indoor/outdoor sensor reports, in °C
HUMIDITY_RANGE = (0.0, 100.0)  # relative humidity, %
_MAX_BACKLOG = SECONDS_PER_DAY  # motion: a poll after a long gap simulates at most one day


def epoch_seconds(now: datetime) -> float:
    """Seconds since the Unix epoch for an aware datetime (naive ones are refused)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime (e.g. datetime.now(UTC))")
    return now.timestamp()


def _clamp(value: float, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return low if value < low else high if value > high else value


def _finite(name: str, value: float, *, minimum: float | None = None) -> float:
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        floor = "" if minimum is None else f" >= {minimum}"
        raise ConfigError(f"{name} must be a finite number{floor}, got {value!r}")
    return float(value)


class TemperatureSignal:
    """A daily cosine around ``mean`` peaking at ``peak_hour`` UTC, plus gaussian noise.

    ``expected(now)`` is the noise-free curve; ``sample(now)`` adds noise and clamps to
    ``TEMPERATURE_RANGE``. The same seed and the same times give the same samples.
    """

    __slots__ = ("_amplitude", "_mean", "_noise", "_peak", "_rng")

    def __init__(
        self,
        mean: float = 21.0,
        amplitude: float = 4.0,
        noise: float = 0.3,
        *,
        peak_hour: float = 15.0,
        seed: int | None = None,
    ) -> None:
        self._mean = _clamp(_finite("mean", mean), TEMPERATURE_RANGE)
        self._amplitude = _finite("amplitude", amplitude, minimum=0.0)
        self._noise = _finite("noise", noise, minimum=0.0)
        self._peak = _finite("peak_hour", peak_hour) % 24.0
        self._rng = random.Random(seed)

    def expected(self, now: datetime) -> float:
        """The curve without noise at ``now`` (aware datetime)."""
        seconds = epoch_seconds(now) % SECONDS_PER_DAY
        phase = 2.0 * math.pi * (seconds / 3600.0 - self._peak) / 24.0
        return _clamp(self._mean + self._amplitude * math.cos(phase), TEMPERATURE_RANGE)

    def sample(self, now: datetime) -> float:
        """One noisy reading at ``now``, in °C."""
        value = self.expected(now) + self._rng.gauss(0.0, self._noise)
        return _clamp(value, TEMPERATURE_RANGE)


class HumiditySignal:
    """Relative humidity falling as temperature rises: ``mean - slope * (t - reference)``.

    Warm air holds more water, so at a constant absolute humidity the relative humidity
    drops by a few percent per degree. Samples carry gaussian noise and stay in 0-100 %.
    """

    __slots__ = ("_mean", "_noise", "_reference", "_rng", "_slope")

    def __init__(
        self,
        mean: float = 50.0,
        slope: float = 2.5,
        noise: float = 1.0,
        *,
        reference: float = 21.0,
        seed: int | None = None,
    ) -> None:
        self._mean = _clamp(_finite("mean", mean), HUMIDITY_RANGE)
        self._slope = _finite("slope", slope, minimum=0.0)
        self._noise = _finite("noise", noise, minimum=0.0)
        self._reference = _finite("reference", reference)
        self._rng = random.Random(seed)

    def expected(self, temperature: float) -> float:
        """The noise-free humidity for ``temperature`` (°C)."""
        value = self._mean - self._slope * (temperature - self._reference)
        return _clamp(value, HUMIDITY_RANGE) if math.isfinite(value) else self._mean

    def sample(self, temperature: float) -> float:
        """One noisy reading, in % relative humidity."""
        return _clamp(
            self.expected(temperature) + self._rng.gauss(0.0, self._noise), HUMIDITY_RANGE
        )


class MotionSignal:
    """Motion events in bursts: burst starts are a Poisson process, each burst a few events.

    ``poll(now)`` returns the event times (epoch seconds) in ``(previous poll, now]``; the
    first poll only starts the schedule (``first_burst_within`` seconds, if given, bounds
    when the first burst starts: someone walks past soon after the sensor comes up). A poll
    after a gap longer than a day simulates the last day only, so the work and the answer
    stay bounded.
    """

    __slots__ = (
        "_burst_rate",
        "_cursor",
        "_events",
        "_first_within",
        "_gap",
        "_pending",
        "_rng",
    )

    def __init__(
        self,
        bursts_per_hour: float = 2.0,
        events_per_burst: tuple[int, int] = (3, 8),
        event_gap: tuple[float, float] = (1.0, 15.0),
        *,
        first_burst_within: float | None = None,
        seed: int | None = None,
    ) -> None:
        rate = _finite("bursts_per_hour", bursts_per_hour, minimum=0.0)
        if rate == 0.0:
            raise ConfigError("bursts_per_hour must be > 0")
        low, high = events_per_burst
        if not 1 <= low <= high:
            raise ConfigError(f"events_per_burst must be 1 <= low <= high, got {events_per_burst}")
        gap_low = _finite("event_gap low", event_gap[0], minimum=0.0)
        gap_high = _finite("event_gap high", event_gap[1], minimum=gap_low)
        if first_burst_within is not None:
            _finite("first_burst_within", first_burst_within, minimum=0.0)
        self._first_within = first_burst_within
        self._burst_rate = rate / 3600.0
        self._events = (low, high)
        self._gap = (gap_low, gap_high)
        self._rng = random.Random(seed)
        self._cursor: float | None = None
        self._pending: list[float] = []  # scheduled event times, ascending

    def _schedule_burst(self, after: float, *, first: bool = False) -> None:
        if first and self._first_within is not None:
            start = after + self._rng.uniform(0.0, self._first_within)
        else:
            start = after + self._rng.expovariate(self._burst_rate)
        count = self._rng.randint(*self._events)
        times = [start]
        for _ in range(count - 1):
            times.append(times[-1] + self._rng.uniform(*self._gap))
        self._pending = times

    def poll(self, now: datetime) -> list[float]:
        """Event times in ``(last poll, now]`` as epoch seconds, oldest first."""
        stamp = epoch_seconds(now)
        cursor = self._cursor
        if cursor is None:
            self._cursor = stamp
            self._schedule_burst(stamp, first=True)
            return []
        if stamp <= cursor:
            return []  # a clock that steps backwards produces nothing
        if stamp - cursor > _MAX_BACKLOG:
            cursor = stamp - _MAX_BACKLOG
            self._schedule_burst(cursor)
        events: list[float] = []
        while self._pending[0] <= stamp:
            events.append(self._pending.pop(0))
            if not self._pending:
                self._schedule_burst(events[-1])
        self._cursor = stamp
        return events


@dataclass(frozen=True, slots=True)
class MotionProfile:
    """The settings of a ``MotionSignal`` (its defaults are the signal's own)."""

    bursts_per_hour: float = 2.0
    events_per_burst: tuple[int, int] = (3, 8)
    event_gap: tuple[float, float] = (1.0, 15.0)
    first_burst_within: float | None = None

    @classmethod
    def paced(cls, interval: float) -> MotionProfile:
        """Motion on the time scale of a sensor reporting every ``interval`` seconds.

        A burst every ~40 intervals, events 1-4 intervals apart, the first burst within 5
        intervals: at 0.5 s a one-minute run sees a burst or three; at 5 s, one in ~3 min.
        """
        step = _finite("interval", interval, minimum=0.0)
        if step == 0.0:
            raise ConfigError("interval must be > 0")
        return cls(3600.0 / (40.0 * step), (3, 8), (step, 4.0 * step), 5.0 * step)

    def signal(self, seed: int | None = None) -> MotionSignal:
        """A fresh ``MotionSignal`` with these settings."""
        return MotionSignal(
            self.bursts_per_hour,
            self.events_per_burst,
            self.event_gap,
            first_burst_within=self.first_burst_within,
            seed=seed,
        )
