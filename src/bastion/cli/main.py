"""The ``bastion`` command: a click group whose subcommands live in sibling modules.

Installed as the ``bastion`` console script and run by ``python -m bastion``; each
subcommand stays thin and calls into the packages (``config``, ``ops``, ``runtime``).
"""

from __future__ import annotations

import click

from bastion import __version__
from bastion.cli.acl import acl_group
from bastion.cli.demo import demo
from bastion.cli.keys import keys_group
from bastion.cli.logger import logger_group
from bastion.cli.passwd import passwd
from bastion.cli.pki import pki_group
from bastion.cli.serve import serve
from bastion.cli.services import alerts, doorlock, sensor

__all__ = ["main"]


@click.group(name="bastion", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="bastion", message="%(prog)s %(version)s")
def main() -> None:
    """Bastion: a hardened IoT MQTT 3.1.1/5.0 broker, secure by default."""


main.add_command(serve)
main.add_command(pki_group)
main.add_command(passwd)
main.add_command(acl_group)
main.add_command(keys_group)
main.add_command(demo)
main.add_command(sensor)
main.add_command(alerts)
main.add_command(doorlock)
main.add_command(logger_group)
