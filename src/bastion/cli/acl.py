"""``bastion acl check``: which ACL rule decides an operation, and why.

Loads the rules exactly as the broker does (an acl_file, or the ``[security.acl]`` table of
a config file) and asks the same question the policy asks at run time. Exit status 0 means
allowed, 1 denied, 2 a usage or file error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bastion.config import load_settings
from bastion.errors import ConfigError
from bastion.security.acl import Access, AclRules, acl_from_toml

__all__ = ["acl_group"]

_OPS: dict[str, Access] = {"read": "read", "write": "write", "subscribe": "subscribe"}


def _fail(message: str) -> None:
    click.echo(f"bastion: error: {message}", err=True)
    sys.exit(2)


def _load_rules(acl_file: Path | None, config: Path | None) -> AclRules:
    if acl_file is not None and config is not None:
        _fail("give either --acl-file or -c/--config, not both")
    try:
        if acl_file is not None:
            return AclRules.load(acl_file)
        settings = load_settings(config)
        if settings.security.acl_file is not None:
            return AclRules.load(settings.security.acl_file)
        if settings.security.acl is not None:
            return acl_from_toml(settings.security.acl, source=f"{config}: security.acl")
    except ConfigError as exc:
        _fail(str(exc))
    _fail("no ACL configured: give --acl-file, or a config file with acl_file or [security.acl]")
    raise AssertionError("unreachable")


@click.group(name="acl")
def acl_group() -> None:
    """Inspect access control lists."""


@acl_group.command()
@click.option("--acl-file", type=click.Path(dir_okay=False, path_type=Path), help="ACL file.")
@click.option(
    "-c", "--config", type=click.Path(dir_okay=False, path_type=Path), help="Config file."
)
@click.option("--user", "username", help="Username; omit for an anonymous client.")
@click.option("--client-id", default="", help="Client id (for %c patterns).")
@click.option("--topic", required=True, help="Topic (read/write) or topic filter (subscribe).")
@click.option(
    "--op",
    type=click.Choice(list(_OPS)),
    required=True,
    help="read: receive messages; write: publish; subscribe: subscribe to a filter.",
)
def check(
    *,
    acl_file: Path | None,
    config: Path | None,
    username: str | None,
    client_id: str,
    topic: str,
    op: str,
) -> None:
    """Say whether USER may OP on TOPIC and which rule decided (exit 0 allowed, 1 denied)."""
    rules = _load_rules(acl_file, config)
    decision = rules.check(username, client_id, topic, _OPS[op])
    who = f"user {username!r}" if username is not None else "anonymous clients"
    verdict = "ALLOW" if decision.allowed else "DENY"
    click.echo(f"{verdict}: {who} {op} {topic!r}")
    if decision.rule is not None:
        click.echo(f"  decided by {decision.rule}")
    else:
        click.echo("  no rule matched: denied by default")
    sys.exit(0 if decision.allowed else 1)
