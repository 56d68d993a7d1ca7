"""The alert service as a network client: motion, offline and threshold alerts on ``alerts/#``.

Feeds what it receives on ``motion/#``, ``status/+`` and the rules' filters to
``alerting.AlertEngine`` and publishes the alerts at QoS 1 through ``netclient.ServiceClient``;
``bastion alerts`` (``cli/services.py``) and the demo run it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from bastion.mqtt.topics import topic_matches
from bastion.services.alerting import ALERT_QOS, STATUS_FILTER, AlertEngine, AlertStats, Rule
from bastion.services.netclient import Backoff, Endpoint, Received, RunBounds, ServiceClient

__all__ = ["AlertReport", "run_alerts"]

_log = structlog.get_logger("bastion.services.alerts")


@dataclass(frozen=True, slots=True)
class AlertReport:
    """What one run of the alert service did (``stats`` are the engine's counters)."""

    received: int
    published: int
    stats: AlertStats


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _is_stale_status(message: Received) -> bool:
    """A retained status is a device's *last known* state, not a change: it raises nothing.

    Without this a restarted alert service would report every device that went offline
    before it started (and again after each reconnect).
    """
    return message.retain and topic_matches(STATUS_FILTER, message.topic)


def run_alerts(
    endpoint: Endpoint,
    bounds: RunBounds,
    *,
    rules: Iterable[Rule] = (),
    holdoff: float = 60.0,
    clock: Callable[[], datetime] = _utc_now,
    backoff: Backoff | None = None,
) -> AlertReport:
    """Raise alerts until ``bounds`` ends; raises ConnectError when the client gives up.

    Subscribes (QoS 1) to ``motion/#``, ``status/+`` and every rule's filter; each alert goes
    to ``alerts/<kind>/<device>`` at QoS 1, at most one per (kind, device) per ``holdoff``
    seconds and within the engine's rate limits.
    """
    engine = AlertEngine(rules, holdoff=holdoff)
    client = ServiceClient(endpoint, backoff=backoff)
    for topic_filter in engine.subscriptions():
        client.subscribe(topic_filter, ALERT_QOS)
    received = published = 0
    try:
        if not bounds.connect(client):
            return AlertReport(0, 0, engine.stats)
        _log.info(
            "alerts.started",
            subscriptions=list(engine.subscriptions()),
            holdoff=holdoff,
        )
        for message in bounds.messages(client):
            if _is_stale_status(message):
                continue
            received += 1
            for alert in engine.handle(message.topic, message.payload, clock()):
                delivery = client.publish(alert.topic, alert.payload, alert.qos, alert.retain)
                published += delivery.accepted
                _log.info(
                    "alert.raised",
                    kind=alert.kind,
                    device=alert.device,
                    topic=alert.topic,
                    source=message.topic,
                    sent=delivery.accepted,
                )
    finally:
        client.stop()
    stats = engine.stats
    _log.info(
        "alerts.stopped",
        received=received,
        raised=stats.raised,
        published=published,
        duplicates=stats.duplicates,
        rate_limited=stats.rate_limited,
        invalid=stats.invalid,
    )
    return AlertReport(received, published, stats)
