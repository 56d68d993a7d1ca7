"""``bastion demo``: the reference system end to end, from nothing, in one command.

Thin on purpose: it parses the options, picks the view (rich on a terminal, plain lines
otherwise) and hands over to ``bastion.demo.run``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from bastion.demo.errors import DemoError
from bastion.demo.run import DEFAULT_DURATION, DemoOptions, run_demo
from bastion.demo.view import LiveView, PlainView, View
from bastion.ops.logging import configure_logging

__all__ = ["demo"]

EXIT_ERROR = 2
MIN_DURATION = 5.0
MAX_DURATION = 86_400.0
MIN_INTERVAL = 0.1
MAX_INTERVAL = 60.0


def _check_duration(ctx: click.Context, param: click.Parameter, value: float) -> float | None:
    if value == 0:
        return None
    if not MIN_DURATION <= value <= MAX_DURATION:
        raise click.BadParameter(
            f"expected 0 (until Ctrl-C) or {MIN_DURATION:g} to {MAX_DURATION:g} seconds, "
            f"got {value:g}",
            ctx=ctx,
            param=param,
        )
    return value


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bastion-demo"),
    show_default=True,
    help="Where the demo keeps its PKI, credentials, config, databases and logs; "
    "reused by the next run.",
)
@click.option(
    "--duration",
    type=float,
    default=DEFAULT_DURATION,
    show_default=True,
    callback=_check_duration,
    help="Seconds to run (0: until Ctrl-C). A sensor is killed at two thirds of it.",
)
@click.option(
    "--attack",
    is_flag=True,
    help="Also run the scripted attacker and show which control blocks each attempt.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address the broker listens on (the clients use loopback for 0.0.0.0 and ::).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="TLS port of the broker [default: 8883, or a free port if 8883 is taken].",
)
@click.option(
    "--interval",
    type=click.FloatRange(MIN_INTERVAL, MAX_INTERVAL),
    default=1.0,
    show_default=True,
    help="Seconds between two readings of each sensor.",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Master key file for the broker's and the logger's databases [default: "
    "$BASTION_MASTER_KEY, else STATE_DIR/master.key].",
)
@click.option(
    "--view",
    "view_mode",
    type=click.Choice(["auto", "live", "plain"]),
    default="auto",
    show_default=True,
    help="live: tables redrawn in place; plain: log lines ending with a JSON summary; "
    "auto: live on a terminal, plain otherwise.",
)
def demo(
    *,
    state_dir: Path,
    duration: float | None,
    attack: bool,
    host: str,
    port: int | None,
    interval: float,
    key_file: Path | None,
    view_mode: str,
) -> None:
    """Run the whole reference system on this machine, secured, and watch it work.

    \b
    Creates STATE_DIR (a dev CA, one password and a least-privilege ACL per client, the
    broker config), starts the broker on TLS 1.3 and the services (three sensors, the door
    lock, the alert service, the data logger) as separate processes, shows readings,
    alerts, logger counts and security events live, unlocks the door once (QoS 2), and
    SIGKILLs sensor2 at two thirds of the run so its will and the offline alert are seen.
    Ctrl-C stops everything cleanly. Without a terminal the last line printed is a JSON
    summary. Exit status: 0 if all went well (and every attack was blocked), 1 if not,
    2 if the demo could not start.
    """
    live = view_mode == "live" or (view_mode == "auto" and sys.stdout.isatty())
    configure_logging("warning", "human" if live else "json")
    view: View = LiveView() if live else PlainView()
    options = DemoOptions(
        state_dir=state_dir,
        duration=duration,
        attack=attack,
        host=host,
        port=port,
        interval=interval,
        key_file=key_file,
    )
    try:
        code = run_demo(options, view)
    except DemoError as exc:
        click.echo(f"bastion: error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except BrokenPipeError:  # stdout went away (`bastion demo | head`); children are stopped
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    sys.exit(code)
