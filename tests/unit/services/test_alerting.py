"""The alert engine: thresholds, motion, offline wills, de-duplication and rate limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import ConfigError
from bastion.services.alerting import Alert, AlertEngine, Rule, alert_topic
from bastion.services.readings import OFFLINE, ONLINE, Reading

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def reading(device: str, value: float, unit: str = "°C") -> bytes:
    return Reading(device, T0, value, unit).to_json()


def motion(device: str = "sensor3") -> bytes:
    return reading(device, 1, "event")


HOT = Rule("temp/+", ">", 30.0, "overheat")


def test_threshold_rule_fires_with_a_qos1_alert() -> None:
    engine = AlertEngine([HOT])
    assert engine.handle("temp/sensor1", reading("sensor1", 25.0), T0) == []
    [alert] = engine.handle("temp/sensor1", reading("sensor1", 31.5), at(1))
    assert (alert.topic, alert.qos, alert.retain) == ("alerts/overheat/sensor1", 1, False)
    assert json.loads(alert.payload) == {
        "kind": "overheat",
        "device": "sensor1",
        "ts": "2026-11-26T10:00:01.000Z",
        "message": "overheat alert from sensor1: value 31.5 > 30",
        "detail": "value 31.5 > 30",
        "topic": "temp/sensor1",
        "value": 31.5,
        "threshold": 30.0,
    }
    assert engine.stats.raised == 1


@pytest.mark.parametrize(
    ("op", "value", "fires"),
    [(">", 30.0, False), (">=", 30.0, True), ("<", 29.9, True), ("<=", 30.1, False)],
)
def test_rule_operators(op: str, value: float, fires: bool) -> None:
    assert Rule("temp/#", op, 30.0, "t").fires(value) is fires


def test_rules_on_other_fields_and_any_topic() -> None:
    engine = AlertEngine([Rule("plant/+/pressure", ">=", 2.0, "pressure", field="bar")])
    payload = json.dumps({"bar": 2.5}).encode()
    [alert] = engine.handle("plant/a/pressure", payload, T0)
    assert alert.topic == "alerts/pressure/pressure"  # the device is the topic's last level
    assert engine.handle("plant/a/b/pressure", payload, T0) == []


def test_motion_raises_motion_alert() -> None:
    engine = AlertEngine()
    [alert] = engine.handle("motion/sensor3", motion(), T0)
    assert alert.topic == "alerts/motion/sensor3"
    assert json.loads(alert.payload)["detail"] == "motion detected"
    assert engine.handle("motion/sensor9", reading("sensor9", 0, "event"), T0) == []


def test_offline_status_raises_offline_alert() -> None:
    engine = AlertEngine()
    assert engine.handle("status/sensor1", ONLINE, T0) == []
    [alert] = engine.handle("status/sensor1", OFFLINE, at(1))
    assert alert.topic == "alerts/offline/sensor1"
    assert alert.kind == "offline"
    assert json.loads(alert.payload)["topic"] == "status/sensor1"


def test_duplicates_within_holdoff_raise_once() -> None:
    engine = AlertEngine(holdoff=60.0)
    assert len(engine.handle("motion/sensor3", motion(), T0)) == 1
    for second in (1, 10, 59):
        assert engine.handle("motion/sensor3", motion(), at(second)) == []
    assert engine.stats.duplicates == 3
    assert len(engine.handle("motion/sensor3", motion(), at(60))) == 1
    # another device or another kind is not a duplicate
    assert len(engine.handle("motion/sensor4", motion("sensor4"), at(61))) == 1
    assert len(engine.handle("status/sensor3", OFFLINE, at(61))) == 1
    # a clock stepping backwards does not re-raise
    assert engine.handle("motion/sensor3", motion(), at(0)) == []


def test_per_device_rate_limit() -> None:
    engine = AlertEngine([HOT], holdoff=0.0, device_rate=1.0, device_burst=2.0)
    hot = reading("sensor1", 40.0)
    raised = [len(engine.handle("temp/sensor1", hot, T0)) for _ in range(5)]
    assert raised == [1, 1, 0, 0, 0]
    assert engine.stats.rate_limited == 3
    assert len(engine.handle("temp/sensor2", reading("sensor2", 40.0), T0)) == 1
    assert len(engine.handle("temp/sensor1", hot, at(1))) == 1  # refilled one token


def test_global_rate_limit_across_devices() -> None:
    engine = AlertEngine(rate=1.0, burst=3.0)
    raised = sum(len(engine.handle(f"motion/s{n}", motion(f"s{n}"), T0)) for n in range(10))
    assert raised == 3
    assert engine.stats.rate_limited == 7
    # a rate-limited alert did not start a hold-off: it can be raised once tokens return
    assert len(engine.handle("motion/s5", motion("s5"), at(1))) == 1


def test_non_matching_topics_and_bad_payloads_are_ignored() -> None:
    engine = AlertEngine([HOT])
    assert engine.handle("humid/sensor2", reading("sensor2", 99.0, "%"), T0) == []
    assert engine.handle("temp/a/sensor1", reading("sensor1", 99.0), T0) == []
    assert engine.handle("status/sensor1/x", OFFLINE, T0) == []
    assert engine.handle("alerts/overheat/sensor1", reading("sensor1", 99.0), T0) == []
    assert engine.handle("motion/sensor3", b"garbage", T0) == []
    assert engine.handle("temp/sensor1", b'{"value": "hot"}', T0) == []
    assert engine.handle("temp/sen+sor", reading("sensor1", 99.0), T0) == []
    assert engine.stats.invalid == 2
    assert engine.stats.raised == 0


def test_subscriptions_cover_motion_status_and_rules() -> None:
    engine = AlertEngine([HOT, Rule("temp/+", "<", 5.0, "frost"), Rule("motion/#", ">", 0, "m")])
    assert engine.subscriptions() == ("motion/#", "status/+", "temp/+")


@pytest.mark.parametrize(
    "make",
    [
        lambda: Rule("temp/#/x", ">", 1.0, "k"),
        lambda: Rule("temp/+", "==", 1.0, "k"),
        lambda: Rule("temp/+", ">", float("inf"), "k"),
        lambda: Rule("temp/+", ">", 1.0, "a/b"),
        lambda: Rule("temp/+", ">", 1.0, "k", field=""),
        lambda: AlertEngine(holdoff=-1.0),
        lambda: AlertEngine(rate=0.0),
        lambda: AlertEngine(device_burst=0.0),
    ],
)
def test_bad_settings_are_config_errors(make: object) -> None:
    assert callable(make)
    with pytest.raises(ConfigError):
        make()


def test_tracking_is_bounded() -> None:
    engine = AlertEngine(holdoff=600.0, rate=1000.0, burst=1000.0, max_tracked=2)
    for n in range(3):
        engine.handle(f"motion/s{n}", motion(f"s{n}"), T0)
    # s0 was forgotten, so its hold-off no longer suppresses
    assert len(engine.handle("motion/s0", motion("s0"), at(1))) == 1
    assert alert_topic("motion", "s0") == "alerts/motion/s0"


@given(st.text(max_size=30), st.binary(max_size=300))
def test_engine_never_raises_on_hostile_messages(topic: str, payload: bytes) -> None:
    engine = AlertEngine([HOT, Rule("#", "<", 0.0, "negative")])
    for alert in engine.handle(topic, payload, T0):
        assert isinstance(alert, Alert)
        assert alert.topic.startswith("alerts/")
        json.loads(alert.payload)
