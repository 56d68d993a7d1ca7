"""``bastion sensor``, ``bastion alerts``, ``bastion doorlock``: the reference services, one each.

Thin: options are parsed here (connection options from ``clientopts``), the runners live in
``services.sensors``, ``services.alerts`` and ``services.lockservice``.
"""

from __future__ import annotations

import math

import click

from bastion.cli.clientopts import (
    client_options,
    configure_service_logging,
    endpoint_from_context,
    positive_seconds,
    run_options,
    serve,
)
from bastion.errors import ConfigError
from bastion.services.alerting import Rule, parse_rule
from bastion.services.alerts import run_alerts
from bastion.services.lockservice import run_doorlock
from bastion.services.readings import ReadingError, check_device_name
from bastion.services.sensors import SENSOR_KINDS, run_sensor, sensor_spec

__all__ = ["alerts", "doorlock", "sensor"]


def _holdoff(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise click.BadParameter("must be a number of seconds >= 0", ctx=ctx, param=param)
    return value


def _rules(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[Rule]:
    rules: list[Rule] = []
    for value in values:
        try:
            rules.append(parse_rule(value))
        except ConfigError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return rules


def _device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_device_name(value)
    except ReadingError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.command()
@click.argument("device", callback=_device)
@click.option(
    "--kind",
    type=click.Choice(SENSOR_KINDS),
    help="What the device measures [default: the reference device's: sensor1 temperature, "
    "sensor2 humidity, sensor3 motion].",
)
@click.option("--topic", help="Topic of the readings [default: temp|humid|motion/DEVICE].")
@click.option(
    "--interval",
    type=float,
    callback=positive_seconds,
    metavar="SECONDS",
    help="Seconds between readings; for motion, the time scale of the bursts (a burst every "
    "~40 intervals, the first within 5) [default: 5].",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    help="Stop cleanly after N readings [default: no limit].",
)
@click.option(
    "--seed",
    type=int,
    help="Seed of the simulated signal [default: derived from DEVICE, same on every run].",
)
@client_options
@run_options
@click.pass_context
def sensor(
    ctx: click.Context,
    *,
    device: str,
    kind: str | None,
    topic: str | None,
    interval: float | None,
    count: int | None,
    seed: int | None,
    duration: float | None,
    log_format: str,
) -> None:
    """Run one simulated sensor DEVICE: JSON readings at QoS 0 on its topic.

    Publishes a retained `online` on status/DEVICE after connecting and registers a Last
    Will that sets it `offline`; a clean stop publishes `offline` first, then DISCONNECT.
    """
    try:
        spec = sensor_spec(device, kind=kind, topic=topic, interval=interval)
    except ConfigError as exc:
        raise click.UsageError(str(exc), ctx) from None
    endpoint = endpoint_from_context(ctx, default_client_id=spec.name)
    configure_service_logging(log_format)
    serve(ctx, lambda bounds: run_sensor(endpoint, spec, bounds, count=count, seed=seed), duration)


@click.command()
@click.option(
    "--rule",
    "rules",
    multiple=True,
    callback=_rules,
    metavar="FILTER:FIELD>VALUE[:KIND]",
    help="Threshold alert, repeatable: e.g. 'temp/#:value>30:overheat' (also <, >=, <=); "
    "KIND names the alert topic level [default: threshold].",
)
@click.option(
    "--holdoff",
    type=float,
    default=60.0,
    show_default=True,
    callback=_holdoff,
    metavar="SECONDS",
    help="At most one alert per kind and device in this many seconds.",
)
@client_options
@run_options
@click.pass_context
def alerts(
    ctx: click.Context,
    *,
    rules: list[Rule],
    holdoff: float,
    duration: float | None,
    log_format: str,
) -> None:
    """Run the alert service: alerts/<kind>/<device> at QoS 1.

    Motion alerts from motion/#, an offline alert when a device's status/DEVICE turns
    `offline` (its Last Will), and the --rule thresholds; de-duplicated and rate-limited.
    """
    endpoint = endpoint_from_context(ctx, default_client_id="alerts")
    configure_service_logging(log_format)
    serve(ctx, lambda bounds: run_alerts(endpoint, bounds, rules=rules, holdoff=holdoff), duration)


@click.command()
@click.argument("device", callback=_device)
@click.option(
    "--authorized",
    multiple=True,
    metavar="USER",
    help="User allowed to send commands (the command's `user` field), repeatable "
    "[default: nobody].",
)
@client_options
@run_options
@click.pass_context
def doorlock(
    ctx: click.Context,
    *,
    device: str,
    authorized: tuple[str, ...],
    duration: float | None,
    log_format: str,
) -> None:
    """Run the door lock DEVICE: executes `lock`/`unlock` sent at QoS 2 on cmd/DEVICE.

    A command is JSON: {"command": "unlock", "request_id": "r-1", "user": "alice"}; it runs
    only when delivered at QoS 2 from an --authorized user. Every decision is published on
    result/DEVICE at QoS 2. Status and Last Will on status/DEVICE, like a sensor.
    """
    endpoint = endpoint_from_context(ctx, default_client_id=device)
    configure_service_logging(log_format)
    serve(
        ctx,
        lambda bounds: run_doorlock(endpoint, device, bounds, authorized=authorized),
        duration,
    )
