"""``bastion passwd FILE USER``: add, change or delete a user in a password file.

New hashes are argon2id, or SCRAM-SHA-256 credentials with ``--scram`` (``security/passwords.py``);
existing lines, including Mosquitto's ``$6$``/``$7$`` hashes and comments, are kept as they are.
The file is replaced atomically with mode 0600.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bastion.errors import ConfigError
from bastion.security.passwords import PasswordFile, validate_username

__all__ = ["passwd"]

EXIT_ERROR = 2
MAX_PASSWORD_BYTES = 1024


def _fail(message: str) -> None:
    click.echo(f"bastion: error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def _read_password(from_stdin: bool) -> bytes:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password.removesuffix("\r")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        _fail("the password is empty")
    data = password.encode("utf-8")
    if len(data) > MAX_PASSWORD_BYTES:
        _fail(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    return data


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("user")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of prompting.",
)
@click.option("-D", "--delete", is_flag=True, help="Delete USER from FILE.")
@click.option(
    "--scram",
    is_flag=True,
    help="Store a SCRAM-SHA-256 credential instead of argon2id: USER can then log in with "
    "MQTT 5 enhanced authentication (SCRAM-SHA-256) as well as with a plain password.",
)
def passwd(file: Path, user: str, password_stdin: bool, delete: bool, scram: bool) -> None:
    """Set USER's password in FILE (created if missing), or delete USER with -D.

    \b
    Examples:
      bastion passwd passwd sensor1                     # prompts twice
      echo "$SECRET" | bastion passwd passwd sensor1 --password-stdin
      bastion passwd passwd sensor1 --scram             # for MQTT 5 SCRAM-SHA-256 clients
      bastion passwd passwd sensor1 -D
    """
    if delete and scram:
        _fail("--scram and -D cannot be used together")
    try:
        validate_username(user)
    except ValueError as exc:
        _fail(f"invalid username {user!r}: {exc}")
    try:
        passwords = PasswordFile.load(file) if file.exists() else PasswordFile()
    except ConfigError as exc:
        _fail(str(exc))
        return
    if delete:
        if not passwords.delete(user):
            _fail(f"{file}: no user {user!r}")
        action = "deleted"
    else:
        existed = user in passwords
        if scram:
            passwords.set_scram(user, _read_password(password_stdin))
        else:
            passwords.set(user, _read_password(password_stdin))
        action = "updated" if existed else "added"
    try:
        passwords.save(file)
    except OSError as exc:
        _fail(f"{file}: cannot write: {exc.strerror or exc}")
    suffix = "" if delete else (" (scram-sha-256)" if scram else " (argon2id)")
    click.echo(f"bastion: {action} user {user!r} in {file}{suffix}", err=True)
