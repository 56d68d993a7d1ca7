"""A PostgreSQL server for the data logger's tests: the caller's, or a private throwaway one.

``BASTION_TEST_POSTGRES_URL`` (a URL a test may create databases with) is used as given.
Otherwise Debian's binaries (``/usr/lib/postgresql/*/bin``) start a private cluster in a
temporary directory, reachable only through a unix socket there, run as the ``postgres``
system user when the tests run as root. Missing PostgreSQL skips locally and fails under
CI=true. Each test gets its own database (``fresh_database``), dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from .brokerproc import IN_CI

URL_ENV: Final = "BASTION_TEST_POSTGRES_URL"
PG_ROOT: Final = Path("/usr/lib/postgresql")
SERVICE_USER: Final = "postgres"
START_TIMEOUT: Final = 60
COMMAND_TIMEOUT: Final = 120
PORT: Final = 5432
"""Only names the socket file (``.s.PGSQL.5432``) in the private directory: no TCP."""


def _unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(
            f"{message} (CI=true: the PostgreSQL tests must run, never skip)", pytrace=False
        )
    pytest.skip(message)


def find_binaries() -> Path | None:
    """The ``bin`` directory of the newest Debian PostgreSQL with initdb and pg_ctl."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    found = [p.parent for p in PG_ROOT.glob("*/bin/initdb") if (p.parent / "pg_ctl").exists()]
    return max(found, key=lambda b: version(b / "x"), default=None)


class PrivateCluster:
    """``initdb`` + ``pg_ctl`` in a temporary directory; stopped and removed by ``stop``."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.root = Path(tempfile.mkdtemp(prefix="bastion-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as: list[str] = []
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            try:
                account = pwd.getpwnam(SERVICE_USER)
            except KeyError:
                shutil.rmtree(self.root, ignore_errors=True)
                _unavailable("running as root, but there is no 'postgres' user to run PostgreSQL")
                raise
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as = ["runuser", "-u", SERVICE_USER, "--"]
        self.started = False

    @property
    def url(self) -> str:
        """Connection URL of the ``postgres`` database as the superuser ``bastion``."""
        return f"postgresql://bastion@/postgres?host={quote(str(self.root))}&port={PORT}"

    def _run(self, command: Sequence[str]) -> None:
        result = subprocess.run(
            [*self._as, *command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}\n{log}"
            )

    def start(self) -> None:
        bin_dir = self.binaries
        self._run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "bastion",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.root}' -p {PORT} "
            "-c fsync=off -c full_page_writes=off -c max_connections=40"
        )
        self._run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                options,
                "-w",
                "-t",
                str(START_TIMEOUT),
                "start",
            ]
        )
        self.started = True

    def stop(self) -> None:
        try:
            if self.started:
                self._run(
                    [
                        str(self.binaries / "pg_ctl"),
                        "-D",
                        str(self.data),
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        "30",
                        "stop",
                    ]
                )
                self.started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A URL of a PostgreSQL server on which the tests may create and drop databases."""
    given = os.environ.get(URL_ENV, "").strip()
    if given:
        yield given
        return
    binaries = find_binaries()
    if binaries is None:
        _unavailable(f"PostgreSQL is not installed (apt-get install postgresql, or set {URL_ENV})")
        return
    cluster = PrivateCluster(binaries)
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()


def _with_dbname(url: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = dbname
    parts = [
        f"{key}={quote(str(value), safe='/')}"
        for key, value in params.items()
        if key not in ("user", "password", "host", "port", "dbname") and value is not None
    ]
    for key in ("host", "port"):
        if params.get(key):
            parts.append(f"{key}={quote(str(params[key]), safe='/')}")
    user = quote(str(params.get("user") or ""), safe="")
    password = params.get("password")
    auth = f"{user}:{quote(str(password), safe='')}@" if password else (f"{user}@" if user else "")
    return f"postgresql://{auth}/{quote(dbname)}" + (f"?{'&'.join(parts)}" if parts else "")


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new empty database on the server (its URL), dropped afterwards."""
    name = f"bastion_test_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_dbname(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
