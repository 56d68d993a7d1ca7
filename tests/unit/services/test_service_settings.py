"""What the service commands are told: alert rules, sensor devices, motion pacing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bastion.errors import ConfigError
from bastion.services.alerting import Rule, parse_rule
from bastion.services.readings import REFERENCE_DEVICES
from bastion.services.sensors import default_seed, sensor_spec
from bastion.services.signals import MotionProfile, epoch_seconds
from bastion.services.simulator import SensorSimulator

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("temp/#:value>30", Rule("temp/#", ">", 30.0, "threshold")),
        ("temp/#:value>30:overheat", Rule("temp/#", ">", 30.0, "overheat")),
        ("humid/+:value <= 20.5:dry", Rule("humid/+", "<=", 20.5, "dry")),
        ("plant/a:bar>=-1e3", Rule("plant/a", ">=", -1000.0, "threshold", field="bar")),
        ("site:1/temp:value<0:frost", Rule("site:1/temp", "<", 0.0, "frost")),
    ],
)
def test_rules_parse(text: str, rule: Rule) -> None:
    assert parse_rule(text) == rule


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("temp/#", "expected TOPICFILTER:FIELD>VALUE"),
        ("temp/#:value=30", "expected TOPICFILTER:FIELD>VALUE"),
        ("temp/#:value>", "expected TOPICFILTER:FIELD>VALUE"),
        (":value>3", "expected TOPICFILTER:FIELD>VALUE"),
        ("temp/#:value>warm", "threshold 'warm' is not a number"),
        ("temp/#:value>nan", "threshold must be finite"),
        ("temp/#/x:value>1", "rule filter"),
        ("temp/#:value>1:a/b", "not a safe topic level"),
        ("temp/#:value>1:", "not a safe topic level"),
    ],
)
def test_bad_rules_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_rule(text)
    assert str(info.value).startswith(f"bad rule {text!r}")


def test_reference_devices_by_name() -> None:
    for reference in REFERENCE_DEVICES:
        assert sensor_spec(reference.name) == reference
    spec = sensor_spec("sensor1", interval=0.5)
    assert (spec.kind, spec.topic, spec.unit, spec.interval) == (
        "temperature",
        "temp/sensor1",
        "°C",
        0.5,
    )


def test_other_devices_need_a_kind_and_may_have_their_own_topic() -> None:
    with pytest.raises(ConfigError, match="give its --kind"):
        sensor_spec("attic")
    spec = sensor_spec("attic", kind="humidity")
    assert (spec.topic, spec.unit, spec.qos) == ("humid/attic", "%", 0)
    assert sensor_spec("sensor1", kind="motion").topic == "motion/sensor1"
    assert sensor_spec("attic", kind="motion", topic="home/attic/pir").topic == "home/attic/pir"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "a/b", "kind": "motion"}, "bad device name"),
        ({"device": "x", "kind": "motion", "topic": "home/+"}, "wildcard"),
        ({"device": "x", "kind": "motion", "topic": "$SYS/x"}, "reserved"),
        ({"device": "x", "kind": "motion", "topic": ""}, "empty"),
        ({"device": "x", "kind": "smell"}, "unknown sensor kind"),
        ({"device": "x", "kind": "motion", "interval": -1.0}, "interval"),
    ],
)
def test_bad_devices_are_config_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        sensor_spec(**kwargs)  # type: ignore[arg-type]


def test_default_seed_is_stable_and_differs_per_device() -> None:
    assert default_seed("sensor1") == default_seed("sensor1")
    assert default_seed("sensor1") != default_seed("sensor2")


def test_paced_motion_bursts_early_and_on_the_interval_scale() -> None:
    profile = MotionProfile.paced(0.5)
    assert profile.first_burst_within == 2.5
    assert profile.event_gap == (0.5, 2.0)
    assert profile.bursts_per_hour == pytest.approx(180.0)
    with pytest.raises(ConfigError):
        MotionProfile.paced(0.0)
    for seed in range(20):
        sim = SensorSimulator([sensor_spec("sensor3", interval=0.5)], seed=seed, motion=profile)
        events = []
        for tenth in range(0, 601):  # one minute, polled every 0.1 s
            events += sim.poll(T0 + timedelta(seconds=tenth / 10))
        assert len(events) >= 3
        first = epoch_seconds(events[0].reading.ts) - epoch_seconds(T0)
        assert first <= 2.5 + 0.001  # the first burst starts within 5 intervals


def test_without_a_profile_motion_keeps_the_signal_defaults() -> None:
    devices = [sensor_spec("sensor3")]
    default = SensorSimulator(devices, seed=3)
    explicit = SensorSimulator(devices, seed=3, motion=MotionProfile())
    for minute in range(0, 240):
        now = T0 + timedelta(minutes=minute)
        assert default.poll(now) == explicit.poll(now)
